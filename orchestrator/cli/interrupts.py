"""How a run ends on Ctrl-C or SIGTERM: Ray stopped (even one interrupted inside ray.init), the
run lock released by the unwinding, exit code 130. Used by cli/app.py, cli/run.py and __main__.py."""

from __future__ import annotations

import contextlib
import os
import signal
import time

INTERRUPTED = 130  # exit code of a run ended by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)
_SIGNALLED: list[int] = []  # SIGINT / SIGTERM received by this run (see _interrupt)
_STARTS_RAY: list[set] = []  # [PIDs of our children before ray.init] once this run starts a local Ray: it stops it


def _interrupt(signum, frame) -> None:
    """SIGINT and SIGTERM end a run the same way: Ray stopped, the lock released, exit 130.

    Each is recorded before KeyboardInterrupt is raised: code inside ray.init can swallow the
    exception (a run interrupted there once went on and exited 0), so the CLI checks the record once
    Ray is up. A second SIGTERM during the cleanup is ignored rather than allowed to cut it short
    (SIGKILL still ends it); a second Ctrl-C interrupts the cleanup, as a user pressing it expects."""
    _SIGNALLED.append(signum)
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_ray() -> None:
    """Shut down what this process started of Ray. An interrupt inside ray.init leaves it half
    connected, and the interpreter's exit then crashed (SIGSEGV) in Ray's own atexit shutdown:
    shut it down here, while the interpreter is whole (__main__ then exits without finalising)."""
    if not _STARTS_RAY:  # Ray was never started here, or was the caller's (tests, notebooks), or joined
        return
    import ray

    for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short (SIGKILL still ends it)
        signal.signal(signum, signal.SIG_IGN)
    try:
        ray.shutdown()
    except Exception:  # a half-started Ray may fail to stop cleanly; the exit still must happen
        pass
    # ray.init interrupted before it recorded its node: shutdown() cannot see the GCS, raylet and
    # agents it had started. They are the descendants of this process that appeared since ray.init began.
    before = _STARTS_RAY.pop()
    end_processes([pid for pid in descendants(os.getpid()) if pid not in before])


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (psutil: every platform it supports)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def end_processes(pids: list[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left after grace_s (zombies count as gone)."""
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    # polled, not psutil.wait_procs: that reaps our own children, whose exit status their Popen then loses
    deadline = time.monotonic() + grace_s
    while (alive := [p for p in processes if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def handled(enabled: bool):
    """Within: SIGINT and SIGTERM raise KeyboardInterrupt (recorded); the previous handlers after."""
    _SIGNALLED.clear()
    _STARTS_RAY.clear()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)} if enabled else {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def starting_ray(local: bool):
    """Around ray.init: remember that this process starts a local Ray (stop_ray then stops it, and
    what it spawned), put our SIGTERM handler back (ray.init replaces it with a bare sys.exit), and
    turn an interrupt that code inside ray.init swallowed, or turned into another error, back into
    an interrupt."""
    if local:
        _STARTS_RAY.append(set(descendants(os.getpid())))
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except BaseException:
        if _SIGNALLED:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is _interrupt:  # ours again; ignored if a SIGTERM came already (as _interrupt does)
            signal.signal(signal.SIGTERM, signal.SIG_IGN if signal.SIGTERM in _SIGNALLED else _interrupt)
    if _SIGNALLED:
        raise KeyboardInterrupt
