"""One writer per results directory: `<results>/.run.lock`, held by the `run` that writes there.

Two runs writing into one results directory would share Train run folders and trial files, so a
second `run` fails at once with one line naming the holder. A lock left by a dead process is taken
over. On shared storage (EFS/NFS) a PID alone does not identify a process, so the lock records the
host, the PID and the process's start time, and the holder renews a lease (`heartbeat`) every
HEARTBEAT_S: a lock from another host is stale once its lease is LEASE_S old; one from this host is
stale as soon as its process is gone (or the PID now belongs to a process started later).

The lock file is written to a unique temporary name and hard-linked into place: `link` fails if the
name exists, atomically, also on NFS, so two runs can never both believe they hold it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = ".run.lock"
HEARTBEAT_S = 10.0  # the holder renews its lease this often
LEASE_S = 60.0  # a lock from another host whose lease is older than this is stale


class LockHeld(RuntimeError):
    """Another live run holds the results directory: the CLI prints it as one line."""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of the file, counted after "(comm)"
    except (OSError, IndexError):
        return ""


def _alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return time.time() - float(info.get("heartbeat", 0)) < LEASE_S
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    recorded = info.get("start", "")
    return not recorded or recorded == _start_time(pid)  # a reused PID is another process


class RunLock:
    def __init__(self, root: str | os.PathLike, run_id: str) -> None:
        self.path = Path(root) / LOCK_NAME
        self.info = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                     "start": _start_time(os.getpid()), "token": secrets.token_hex(8), "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_tmp(self) -> Path:
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.info['host']}.{self.info['pid']}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({**self.info, "heartbeat": time.time()}))
        return tmp

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treat as held by an unknown, dead holder (see acquire)

    def acquire(self) -> None:
        for _ in range(20):  # a few rounds: another run may take over a stale lock at the same time
            tmp = self._write_tmp()
            try:
                os.link(tmp, self.path)  # fails if the lock exists
                break
            except FileExistsError:
                held = self._read()
                if held is None:
                    continue  # released meanwhile
                if held and _alive(held):
                    since = time.strftime("%H:%M:%S", time.localtime(float(held.get("since", 0))))
                    raise LockHeld(
                        f"results directory {self.path.parent} is in use by run {held.get('run_id')} (pid "
                        f"{held.get('pid')} on host {held.get('host')}, since {since}): wait for it to end, or use "
                        "another --results") from None
                # stale: move it aside under a unique name (only one taker succeeds), then try again
                aside = tmp.with_name(tmp.name + ".stale")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                moved = json.loads(aside.read_text() or "{}") if aside.exists() else {}
                if moved.get("token") != held.get("token"):  # another run took it over meanwhile: put it back
                    try:
                        os.link(aside, self.path)
                    except FileExistsError:
                        pass
                aside.unlink(missing_ok=True)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise LockHeld(f"could not take the lock {self.path}: other runs keep taking it")
        self._thread = threading.Thread(target=self._renew, name="results-lock-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (self._read() or {}).get("token") != self.info["token"]:
                return  # taken over (we were presumed dead): never write over another holder
            tmp = self._write_tmp()
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self._read() or {}).get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
