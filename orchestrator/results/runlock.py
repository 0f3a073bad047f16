"""One writer per results directory: `<results>/.run.lock`, held by the `run` that writes there.

Two runs writing into one results directory would share Train run folders and trial files, so a
second `run` fails at once with one line naming the holder (its run id, PID and host, written into
the lock file). The lock is a kernel lock (`fcntl.flock`) on that file, held for the whole run: it
is released when the holder's process ends, however it ends (SIGKILL included), so a lock left by a
dead process is simply taken. That also holds on shared storage, where a PID alone identifies no
process: Linux maps flock on NFS (EFS) to an NFSv4 lock, which the server keeps under the client's
lease and drops when a crashed client's lease expires (about 90 s).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".run.lock"


class LockHeld(RuntimeError):
    """Another live run holds the results directory: the CLI prints it as one line."""


class RunLock:
    def __init__(self, root: str | os.PathLike, run_id: str) -> None:
        self.path = Path(root) / LOCK_NAME
        self.info = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _holder(fd)
            os.close(fd)
            since = time.strftime("%H:%M:%S", time.localtime(float(held.get("since", 0))))
            raise LockHeld(f"results directory {self.path.parent} is in use by run {held.get('run_id', '?')} (pid "
                           f"{held.get('pid', '?')} on host {held.get('host', '?')}, since {since}): wait for it to end, "
                           "or use another --results") from None
        os.ftruncate(fd, 0)  # whatever a dead holder left is stale
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # no holder named any more
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def is_locked(root: str | os.PathLike) -> bool:
    """True while a live run holds `root` (for tests and tools; takes and drops the lock to find out)."""
    path = Path(root) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
