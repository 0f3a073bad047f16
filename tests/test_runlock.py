"""One run per results directory: a live holder refuses a second run with one line; a stale lock
(dead process, reused PID, expired lease of another host) is taken over."""

import json
import socket
import subprocess
import time

import pytest

from orchestrator.cli import main
from orchestrator.runlock import LEASE_S, LOCK_NAME, LockHeld, RunLock, _start_time


def _plant(root, **info):
    root.mkdir(parents=True, exist_ok=True)
    base = {"run_id": "20260101-000000-beef", "host": socket.gethostname(), "token": "x", "since": time.time(),
            "heartbeat": time.time()}
    (root / LOCK_NAME).write_text(json.dumps({**base, **info}))


def test_a_second_run_on_a_directory_in_use_fails_at_once(tmp_path, capsys):
    holder = subprocess.Popen(["sleep", "60"])  # a live process of this host stands for the other run
    try:
        _plant(tmp_path, pid=holder.pid, start=_start_time(holder.pid))
        started = time.perf_counter()
        assert main(["run", "minimax", "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert time.perf_counter() - started < 5
        assert err.count("\n") == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in err
        assert "20260101-000000-beef" in err and not (tmp_path / "minimax").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("info", [
    {"pid": 2**22 + 12345},  # a PID no process has
    {"pid": 1, "start": "0"},  # a live PID, but a process started at another time: reused
    {"pid": 1, "host": "another-node", "heartbeat": time.time() - 2 * LEASE_S},  # another host, lease expired
])
def test_a_stale_lock_is_taken_over(tmp_path, info):
    _plant(tmp_path, **info)
    lock = RunLock(tmp_path, "mine")
    lock.acquire()
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.info["token"]
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_lease_of_another_host_is_respected(tmp_path):
    _plant(tmp_path, pid=1, host="another-node", heartbeat=time.time())
    with pytest.raises(LockHeld, match="another-node"):
        RunLock(tmp_path, "mine").acquire()


def test_two_locks_exclude_each_other_and_release_only_their_own(tmp_path):
    first = RunLock(tmp_path, "a")
    first.acquire()
    with pytest.raises(LockHeld, match="run a"):
        RunLock(tmp_path, "b").acquire()
    first.release()
    second = RunLock(tmp_path, "b")
    second.acquire()
    first.release()  # a second release by the old holder must not remove the new holder's lock
    assert (tmp_path / LOCK_NAME).exists()
    second.release()
