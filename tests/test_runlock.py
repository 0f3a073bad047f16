"""One run per results directory: a live holder (a real process holding the lock) refuses a second
run with one line naming it; a lock whose holder died (killed with SIGKILL) is taken over."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.cli import main
from orchestrator.results.runlock import LOCK_NAME, LockHeld, RunLock, is_locked

HOLDER = """
import sys, time
from orchestrator.results.runlock import RunLock
lock = RunLock(sys.argv[1], "20260101-000000-beef")
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def _hold(root):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_directory_in_use_fails_at_once(tmp_path, capsys):
    holder = _hold(tmp_path)
    try:
        started = time.perf_counter()
        assert main(["run", "minimax", "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert time.perf_counter() - started < 5
        assert err.count("\n") == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in err
        assert "20260101-000000-beef" in err and not (tmp_path / "minimax").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = _hold(tmp_path)
    assert is_locked(tmp_path)
    holder.send_signal(signal.SIGKILL)  # no cleanup: the file still names it
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    assert not is_locked(tmp_path)
    with RunLock(tmp_path, "mine") as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "mine" and lock.info["pid"] != holder.pid
    assert not is_locked(tmp_path)


def test_two_locks_exclude_each_other(tmp_path):
    first = RunLock(tmp_path, "a")
    first.acquire()
    with pytest.raises(LockHeld, match="run a"):
        RunLock(tmp_path, "b").acquire()
    first.release()
    with RunLock(tmp_path, "b"):
        assert is_locked(tmp_path)
