"""Progress lines: what trials append to their progress file, the driver prints, each line once;
the bar a terminal shows under them."""

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from orchestrator import progress

ROOT = Path(__file__).resolve().parents[1]


def test_tail_prints_each_complete_line_once_with_the_trials_name(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    progress.append(str(a), "old line of an earlier run")
    said = []
    tail = progress.Tail(said.append, [str(a), str(b)], ["clip-x", "clip-y"], interval_s=60)
    progress.append(str(a), "images 640/3000 (55/s, ~43 s left)")
    tail.poll()  # b has no file yet: nothing, no error
    assert said == ["clip-x: images 640/3000 (55/s, ~43 s left)"]  # not the earlier run's line
    (b).mkdir(exist_ok=True)
    with open(b / progress.FILE, "a") as fh:
        fh.write("half a li")  # still being written: waits
    tail.poll()
    assert len(said) == 1
    with open(b / progress.FILE, "a") as fh:
        fh.write("ne\n")
    with tail:  # the thread, and a last poll at exit
        pass
    assert said == ["clip-x: images 640/3000 (55/s, ~43 s left)", "clip-y: half a line"]


def test_tail_opens_only_the_files_of_trials_running_or_just_ended(tmp_path, monkeypatch):
    """Issue 23: a poll's cost is the running trials', not the study's (2,000 trials, 2 running)."""
    dirs = [tmp_path / f"t{i}" for i in range(2000)]
    running = [0, 1]
    said, opened = [], []
    tail = progress.Tail(said.append, [str(d) for d in dirs], [f"t{i}" for i in range(2000)], interval_s=60,
                         active=lambda: running)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    progress.append(str(dirs[1]), "epoch 1")
    tail.poll(tail._indexes())
    assert len(opened) == 2 + 1 and said == ["t1: epoch 1"]  # the two running trials' files (+ the append)
    progress.append(str(dirs[1]), "done")
    running[:] = [2]  # t1 ended after its last line, t2 started
    opened.clear()
    tail.poll(tail._indexes())
    assert said[-1] == "t1: done" and sorted(opened) == sorted(str(dirs[i] / progress.FILE) for i in (0, 1, 2))
    opened.clear()
    tail.poll(tail._indexes())
    assert opened == [str(dirs[2] / progress.FILE)]  # t0, t1 polled once after they left, then no more


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_counts_each_trials_units_once_and_lines_go_above_it(capsys):
    screen = _Terminal()
    with progress.Bar("run-a", "gan", [4, 4], "epoch", file=screen) as bar:
        assert progress.for_run("run-a") is bar
        bar.step(0, 1)
        bar.step(0, 2)
        bar.step(0, 2)  # an epoch reported again (a retried or replayed epoch) is not progress
        bar.step(1, 1)
        assert bar.bar.n == 3
        bar.end(1)  # stopped early: its remaining epochs are spent
        assert bar.bar.n == 6 and "1/2 trials" in screen.getvalue()
        progress.say("[gan] a line")  # written above the bar (tqdm clears and redraws it)
    assert progress.for_run("run-a") is None
    assert "\r[gan]" in screen.getvalue() and "6/8 epochs" in screen.getvalue()
    assert "[gan] a line\n" in capsys.readouterr().out


def test_no_bar_where_the_output_is_not_a_terminal(capsys):
    with progress.Bar("run-b", "minimax", [1, 1], "trial", file=io.StringIO()) as bar:
        bar.step(0, 1)
        bar.end(0)
        assert bar.bar is None
        progress.say("a line")
    assert capsys.readouterr().out == "a line\n"


def _in_a_terminal(cmd: list[str], env: dict, timeout_s: float = 300) -> str:
    """Run `cmd` with a pseudo-terminal (120 x 40) as its stdout and stderr; its output."""
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    out, deadline = b"", time.time() + timeout_s
    try:
        while time.time() < deadline:
            if not select.select([main], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert run.wait(timeout=max(1, deadline - time.time())) == 0, out.decode(errors="replace")[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
        os.close(main)
    return out.decode(errors="replace")


def test_a_run_in_a_terminal_draws_a_bar_and_shows_no_ray_notices(tmp_path):
    """A real run with a terminal for stdout: the bar is drawn under the lines; Ray's token-auth notice
    (our dashboard line says where the token is) and Tune's "bottleneck" timings stay out. Token auth on
    (Ray's default), its token under this test's own HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)
    out = _in_a_terminal([sys.executable, "-m", "orchestrator", "run", "minimax", "--results", str(tmp_path / "r"),
                          "--set", "num_lrs=20", "--set", "steps=100", "--no-dashboard"], env)
    assert "\r[minimax] " in out and "5/5 trials [" in out, out[-3000:]
    assert "/100 reached" in out, out[-3000:]
    assert "Token authentication is enabled" not in out and "bottleneck" not in out, out[-3000:]


def test_a_counted_step_travels_through_the_file_and_draws_its_own_bar(tmp_path, monkeypatch, capsys):
    progress.append(str(tmp_path), "images 640/3000\t(55/s)\n", progress=("images", 640, 3000))
    progress.append(str(tmp_path), "images 3000/3000", progress=("images", 3000, 3000))
    progress.append(str(tmp_path), "image features cached")
    lines = (tmp_path / progress.FILE).read_text().splitlines()
    assert lines == ["images 640/3000 (55/s)\timages\t640\t3000", "images 3000/3000\timages\t3000\t3000",
                     "image features cached"]  # one line each, the count after tabs
    said, steps = [], []
    tail = progress.Tail(said.append, [str(tmp_path)], ["clip-x"], step=lambda *a: steps.append(a))
    tail.offsets = {path: 0 for path in tail.offsets}
    tail.poll()
    assert said == ["clip-x: images 640/3000 (55/s)", "clip-x: images 3000/3000", "clip-x: image features cached"]
    assert steps == [("clip-x: images", 640, 3000), ("clip-x: images", 3000, 3000)]

    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    tell = progress.terminal("gan")  # a workload's preflight, before Ray: the line, and in a terminal a bar
    tell("FID classifier epoch 1/4", progress=("FID classifier epochs", 1, 4))
    assert "[gan] FID classifier epochs" in progress._STEPS
    tell("FID classifier epoch 4/4", progress=("FID classifier epochs", 4, 4))
    assert not progress._STEPS  # closed at its total
    assert "[gan] FID classifier epoch 1/4\n" in screen.getvalue() and "1/4 [" in screen.getvalue()
    monkeypatch.undo()
    progress.step("[gan] x", 1, 4)  # not a terminal: no bar
    assert not progress._STEPS


def test_step_bars_start_over_close_by_trial_and_keep_their_count_visible(monkeypatch):
    screen = _Terminal()
    long = "[clip] clip-image_model=efficientnet-lite2,text_model=all-mpnet-base-v2,seed=43: " * 2 + "images"
    progress.step(long, 640, 3000, file=screen)
    progress.step(long, 64, 3000, file=screen)  # a restarted worker counts again from the start
    assert progress._STEPS[long].n == 64
    progress.step("[clip] other: captions", 1, 9, file=screen)
    progress.close_steps("[clip] clip-image_model")  # that trial's epoch came, or it ended
    assert list(progress._STEPS) == ["[clip] other: captions"]
    progress.close_steps("[clip] ")
    drawn = [line for line in screen.getvalue().split("\r") if "images" in line]
    assert drawn and all("…" in line and "/3000 [" in line for line in drawn)  # the end of a long label, and the count


def test_a_resumed_trials_earlier_epochs_count_but_not_in_the_rate():
    with progress.Bar("run-c", "gan", [10], "epoch", file=_Terminal()) as bar:
        bar.step(0, 6)  # resumed at epoch 6: 5 epochs ran in an earlier run
        assert (bar.bar.n, bar.bar.initial) == (6, 5)


def test_a_reader_that_went_away_does_not_end_the_run(monkeypatch):
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

        def fileno(self):
            return self.fd

    gone = Gone()
    gone.fd = os.dup(1)
    monkeypatch.setattr(sys, "stdout", gone)
    try:
        progress.say("a line nobody reads")  # no exception: the rest goes to /dev/null
    finally:
        os.close(gone.fd)
