"""Progress lines: what trials append to their progress file, the driver prints, each line once."""

from orchestrator import progress


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
