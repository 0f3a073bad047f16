"""The CLI end to end, in process: Ray Tune runs the study, tables are read back from Parquet."""

from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main
from tests.browser import assert_report_renders

TINY = ["--set", "num_lrs=40", "--set", "steps=300"]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    assert main(["run", "minimax", "--results", str(results), *TINY]) == 0
    return results


def test_run_writes_one_row_per_algorithm_and_lr(finished_run):
    trials = pd.read_parquet(finished_run / "minimax" / "trials.parquet")
    assert len(trials) == 5 * 40
    assert set(trials["algorithm"]) == {"gda", "alt_gda", "gd", "extragradient", "optimistic"}
    for column in ("run_id", "trial_id", "trial_key", "status", "wall_time_s", "lr", "a", "b", "c", "steps", "x0", "y0",
                   "final_x", "final_y", "final_distance", "converged", "rate", "spectral_radius",
                   "saddle_x", "saddle_y"):
        assert column in trials, column
    assert (trials["status"] == "TERMINATED").all() and trials["run_id"].nunique() == 1
    assert (trials.groupby("algorithm")["lr"].nunique() == 40).all()
    assert trials.select_dtypes("number").notna().all().all()
    assert (trials["converged"] == (trials["spectral_radius"] < 1)).all()
    gda = trials[trials["algorithm"] == "gda"]
    assert (gda["converged"] == (gda["lr"] < 0.25)).all()
    assert not trials[trials["algorithm"] == "gd"]["converged"].any()


def test_steps_table_holds_distance_curves(finished_run):
    steps = pd.read_parquet(finished_run / "minimax" / "steps.parquet")
    assert {"algorithm", "lr", "step", "distance", "run_id", "trial_id"} <= set(steps.columns)
    curve = steps[(steps["algorithm"] == "gda")].sort_values("step")
    assert curve["step"].iloc[0] == 0 and curve["step"].max() == 300
    assert steps["distance"].map(lambda d: d == d and d != float("inf")).all()


def test_runs_accumulate_and_report_writes_plots(finished_run, capsys):
    before = pd.read_parquet(finished_run / "minimax" / "trials.parquet")  # whatever other tests of the module added
    assert main(["run", "minimax", "--results", str(finished_run), "--set", "num_lrs=10", "--set", "steps=50"]) == 0
    trials = pd.read_parquet(finished_run / "minimax" / "trials.parquet")
    assert trials["run_id"].nunique() == before["run_id"].nunique() + 1 and len(trials) == len(before) + 5 * 10
    first = sorted(trials["run_id"].unique())[0]  # the fixture's run
    capsys.readouterr()
    assert main(["report", "minimax", "--results", str(finished_run), "--run", first]) == 0
    out = capsys.readouterr().out
    assert "gda" in out and "(0, 0.25)" in out and "none" in out  # analytic GDA range; gd never stable
    plots = list((finished_run / "minimax" / "report").glob(f"*{first}.png"))
    assert len(plots) == 2 and all(p.stat().st_size > 10_000 for p in plots)


def test_rerun_keeps_finished_trials_and_fresh_reruns_them(finished_run, capsys):
    table = finished_run / "minimax" / "trials.parquet"
    before = sorted(p.name for p in table.iterdir())
    capsys.readouterr()
    assert main(["run", "minimax", "--results", str(finished_run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "nothing to run" in out
    assert "200/200 rows ok " in out and "/200 reached" in out and "e-3" not in out  # not a best-of distance
    assert sorted(p.name for p in table.iterdir()) == before  # nothing rerun, nothing duplicated
    assert main(["run", "minimax", "--results", str(finished_run), *TINY, "--fresh"]) == 0
    trials = pd.read_parquet(table)
    assert len(trials) == len(pd.concat([pd.read_parquet(table / name) for name in before])) + 5 * 40


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown study"),
    (["run", "minimax", "--set", "bogus=1"], "unknown setting 'bogus'"),
    (["run", "minimax", "--set", "lr_max=abc"], "expected a number"),
    (["run", "minimax", "--set", "lrs=0.1,0"], "lr must be"),
    (["run", "minimax", "--set", "steps=-3"], "steps must be > 0"),
    (["run", "minimax", "--set", "use_gpu=true"], "never use a GPU"),
    (["report", "minimax", "--run", "no-such-run"], "no run 'no-such-run'"),
])
def test_bad_input_is_one_line_and_leaves_results_intact(finished_run, capsys, argv, message):
    before = sorted(p.name for p in (finished_run / "minimax" / "trials.parquet").iterdir())
    capsys.readouterr()
    assert main([*argv, "--results", str(finished_run)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in (finished_run / "minimax" / "trials.parquet").iterdir()) == before


@pytest.mark.parametrize("argv, message", [
    (["run", "minimax", "--tracker", "mlfow"], "argument --tracker: invalid choice: 'mlfow'"),
    (["run", "minimax", "--samples", "many"], "argument --samples: invalid int value"),
    (["launch"], "invalid choice: 'launch'"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1 and "--help" in err, err


def test_unwritable_results_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "minimax", "--results", str(blocker / "results")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    assert "--set" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "minimax.steps = 1000  # T, iterations per run" in out and "--profile paper" in out  # the field's comment
    assert "gan.num_workers = 2  (paper: 1)" in out and "minimax.num_workers" not in out  # Train settings: Train studies
    assert "fail_at_epoch" not in out and "(paper: )" not in out  # no test hooks; an empty value says so


def test_unreachable_address_is_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["run", "minimax", "--address", f"127.0.0.1:{port}", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster" in err and err.count("\n") == 1


def test_full_disk_during_a_write_is_one_line_and_keeps_earlier_results(finished_run, capsys, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    table = finished_run / "minimax" / "trials.parquet"
    before = {p.name: p.read_bytes() for p in table.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    capsys.readouterr()
    assert main(["run", "minimax", "--results", str(finished_run), "--set", "num_lrs=7", "--set", "steps=20"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "earlier results are intact" in err
    assert err.strip().count("\n") == 0
    assert {p.name: p.read_bytes() for p in table.iterdir()} == before  # nothing torn, nothing lost


def html_images(page: str) -> list[bytes]:
    """The decoded <img> payloads of a report page (parsing it as HTML on the way)."""
    import base64
    from html.parser import HTMLParser

    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                src = dict(attrs)["src"]
                assert src.startswith("data:image/png;base64,"), src[:40]
                found.append(base64.b64decode(src.split(",", 1)[1]))

    Parser().feed(page)
    return found


def test_html_report_is_self_contained(finished_run, capsys):
    assert main(["report", "--results", str(finished_run)]) == 0
    page = (finished_run / "report.html").read_text()
    images = html_images(page)
    assert len(images) >= 2 and all(img[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<h2>minimax</h2>" in page and "(0, 0.25)" in page and "<h3>runs</h3>" in page
    # headed by its key result in one sentence, numbers in real tables, no best-of distance of ~1e-300
    assert '<p class="key">The learning rates at which runs reach the saddle within T steps match the analytic' in page
    assert page.count('<table class="sortable">') == 2 and "final_distance" not in page
    assert_report_renders(finished_run / "report.html", plots=2)  # the minimax heatmap and curves


def test_a_run_that_cannot_start_leaves_the_report_as_it_was(finished_run, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capsys.readouterr()
    assert main(["report", "minimax", "--results", str(finished_run)]) == 0
    before = capsys.readouterr().out
    args = ["run", "minimax", "--results", str(finished_run), "--set", "steps=777"]  # a new spec...
    assert main([*args, "--address", f"127.0.0.1:{port}"]) == 2  # ...whose run never started
    assert main([*args, "--address", "ray://127.0.0.1:10001"]) == 2
    capsys.readouterr()
    assert main(["report", "minimax", "--results", str(finished_run)]) == 0
    assert capsys.readouterr().out == before


def test_an_interrupt_swallowed_inside_ray_init_still_ends_the_run(tmp_path, monkeypatch):
    """Code inside ray.init can catch the KeyboardInterrupt of a Ctrl-C (a run once went on to exit 0):
    the CLI records every SIGINT/SIGTERM and, once Ray is up, ends the run with 130, nothing run."""
    import os
    import signal

    from orchestrator.engine import run as ray_backend
    from orchestrator.engine import session as ray_session

    def start_swallowing(address=None, dashboard=True):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to our handler, which raises...
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # (a bytecode boundary for the handler to run)
        except KeyboardInterrupt:
            pass  # ...and "Ray" swallows it
        return ray_session.Session(owned=False, dashboard_url=None)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN where the shell started us in the background
    monkeypatch.setattr(ray_session, "start", start_swallowing)
    monkeypatch.setattr(ray_session, "ray_is_up", lambda: True)  # the caller's Ray: not ours to stop
    ran = []
    monkeypatch.setattr(ray_backend, "run_experiment", lambda *a, **k: ran.append(a))
    assert main(["run", "minimax", "--results", str(tmp_path), *TINY]) == 130
    assert not ran
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored after the run


def test_descendants_of_a_process_are_found_and_ended():
    """What ends a Ray whose ray.init was interrupted before it recorded its processes."""
    import signal
    import subprocess
    import sys
    import time

    from orchestrator.cli.interrupts import descendants, end_processes

    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
    try:
        deadline = time.time() + 10
        while len(descendants(child.pid)) < 1 and time.time() < deadline:
            time.sleep(0.1)
        found = descendants(child.pid)
        assert len(found) == 1
        end_processes([child.pid, *found], grace_s=2)
        assert child.wait(timeout=5) == -signal.SIGTERM
    finally:
        child.kill()


def test_report_html_links_grids_past_its_cap_and_says_so(tmp_path, monkeypatch, capsys):
    """Issue 23: a sweep of 100 pairs would embed hundreds of grids (tens of MB); past the cap they are
    linked to their files, and the page says how many. A GAN folder of 2 trials, the cap set to 1."""
    import re
    import shutil

    from orchestrator.reports import html as report_html

    results = tmp_path / "results"
    shutil.copytree(Path(__file__).parent / "data" / "results-v2", results)
    monkeypatch.setattr(report_html, "EMBEDDED_GRIDS", 1)
    assert main(["report", "--results", str(results)]) == 0
    page = (results / "report.html").read_text()
    assert "1 of 2 grids embedded; the other 1 are linked" in page
    (link,) = re.findall(r'<p class="linked"><a href="([^"]+)">', page)
    assert link.startswith("gan/artifacts/") and link.endswith(".png") and (results / link).is_file()
    assert page.count('<div class="grids two samples"><figure>') == 1  # the first grid, embedded
