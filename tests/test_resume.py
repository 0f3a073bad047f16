"""Killing the driver of a run and running the same command again finishes only what is missing:
the finished epochs are kept, the Train run resumes from its last checkpoint, each epoch appears
once, with the numbers of an uninterrupted twin bit for bit. A real process is killed (SIGKILL to the
whole process group), nothing is mocked."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tests.chaos import compare_tables

ROOT = Path(__file__).resolve().parents[1]


def test_killed_run_resumes_from_its_checkpoint(data_dir, gan_cache, tmp_path):
    results, cache = tmp_path / "results", gan_cache
    cmd = [sys.executable, "-m", "orchestrator", "run", "gan", "--results", str(results), "--data-dir", data_dir,
           "--no-dashboard", "--set", f"cache_dir={cache}", "--set", "train_images=640", "--set", "epochs=3",
           "--set", "sample_epochs=3", "--set", "fid_images=200", "--set", "num_workers=1",
           "--set", "cpus_per_worker=2"]
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's
    steps_dir = results / "gan" / "steps.parquet"
    # whole parts only: pathlib's glob also matches a writer's hidden temporary, which a kill may leave unrenamed
    parts = lambda: [p for p in steps_dir.glob("*.parquet") if not p.name.startswith(".")]  # noqa: E731
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (steps_dir.exists() and parts()):
            assert first.poll() is None, "the first run ended before it could be interrupted"
            time.sleep(0.5)
        assert parts(), "no epoch finished in time"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and every Ray process it started
        first.wait()
    assert not any(not p.name.startswith(".") for p in (results / "gan" / "trials.parquet").glob("*.parquet"))
    # `clean` keeps what resume needs: the unfinished trial's Train run and its checkpoints
    train_runs = lambda: [p for p in (results / "_ray").iterdir() if p.name.startswith("gan-")  # noqa: E731
                          and not re.fullmatch(r"gan-\d{8}-\d{6}-[0-9a-f]{4}", p.name)]  # not a Tune experiment
    (train_run,) = train_runs()
    cleaned = subprocess.run([sys.executable, "-m", "orchestrator", "clean", "--results", str(results), "--yes"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0 and train_run.exists() and list(train_run.rglob("state.pt")), cleaned.stdout

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    trials = pd.read_parquet(results / "gan" / "trials.parquet")
    steps = pd.read_parquet(steps_dir)
    assert len(trials) == 1 and trials["status"].iloc[0] == "TERMINATED"
    assert trials["resumed_from_epoch"].iloc[0] >= 1  # it went on from a checkpoint, not from scratch
    assert sorted(steps["epoch"]) == [1, 2, 3]  # each epoch once, across the two runs
    assert steps["run_id"].nunique() == 2

    # once finished, `clean` frees its checkpoints (a dry run first says so) and the result stays kept
    dry = subprocess.run([sys.executable, "-m", "orchestrator", "clean", "--results", str(results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and str(train_run) in dry.stdout and "would free" in dry.stdout and train_run.exists()
    cleaned = subprocess.run([sys.executable, "-m", "orchestrator", "clean", "--results", str(results), "--yes"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0 and "freed" in cleaned.stdout and not train_runs(), cleaned.stdout
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert third.returncode == 0 and "nothing to run" in third.stdout
    assert len(pd.read_parquet(results / "gan" / "trials.parquet")) == 1

    # bit-exact (issue 22): the uninterrupted twin ends with the same losses and FIDs, epoch by epoch
    twin = subprocess.run([*cmd[:cmd.index("--results") + 1], str(tmp_path / "twin"), *cmd[cmd.index("--results") + 2:]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert twin.returncode == 0, twin.stderr[-2000:]
    diff = compare_tables(tmp_path / "twin", results)
    assert diff.lost == diff.duplicates == diff.differing == 0, diff.details


def test_interrupted_minimax_runs_only_its_missing_trials_and_report_shows_them_all(ray_session, tmp_path, capsys,
                                                                                  monkeypatch):
    from orchestrator.cli import main
    from orchestrator.results.store import ResultStore

    args = ["run", "minimax", "--results", str(tmp_path), "--set", "num_lrs=300", "--set", "steps=100",
            "--set", "algorithms=gda,gd"]  # 2 algorithms x 3 chunks of 100 lrs: 6 trials of 100 rows
    with monkeypatch.context() as patched:  # a run killed before its end compacts nothing
        patched.setattr(ResultStore, "compact_run", lambda *args: 0)
        assert main(args) == 0
    table = tmp_path / "minimax" / "trials.parquet"
    parts = sorted(table.glob("*.parquet"))
    assert len(parts) == 6
    for part in parts[1:]:  # as if the run had been killed after its first trial: 100 rows, 1 trial
        part.unlink()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1/6 trials already finished" in out and "nothing to run" not in out
    trials = pd.read_parquet(table)
    assert len(trials) == 600 and trials["run_id"].nunique() == 2 and not trials.duplicated(["algorithm", "lr"]).any()
    # the second run compacted every finished trial's parts, the kept one's too: one part per table
    assert [p.name for p in table.glob("*.parquet")] == [f"c-{trials['run_id'].max()}.parquet"]

    assert main(["report", "minimax", "--results", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    first, second = sorted(trials["run_id"].unique())
    assert f"6 trials from runs {first}, {second}" in text  # the kept trial and the 5 the second run ran
    # the whole grid: one range of lrs reaching the saddle in T=100 steps, from the first chunk (kept from
    # the first run) to the last (run by the second): |1 - 8 lr|^100 < 7e-7 for lr in ~(0.017, 0.233)

    found = re.search(r"^gda\s+\[(0\.0[0-9]+), (0\.2[0-9]+)\]\s+\(0, 0\.25\)", text, re.M)
    assert found and float(found.group(1)) < 0.03 and float(found.group(2)) > 0.22, text
    assert main(["report", "minimax", "--results", str(tmp_path), "--run", second]) == 0
    assert f"(run {second})" in capsys.readouterr().out


def test_a_run_with_nothing_to_run_compacts_what_a_killed_run_left(ray_session, tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main
    from orchestrator.results.store import ResultStore

    args = ["run", "minimax", "--results", str(tmp_path), "--set", "num_lrs=20", "--set", "steps=50"]
    with monkeypatch.context() as patched:  # every trial finished, the run killed before it compacted
        patched.setattr(ResultStore, "compact_run", lambda *args: 0)
        assert main(args) == 0
    tables = {t: tmp_path / "minimax" / f"{t}.parquet" for t in ("trials", "steps")}
    before = {t: pd.read_parquet(d).sort_values(["algorithm", "lr"] + ["step"] * (t == "steps")).reset_index(drop=True)
              for t, d in tables.items()}
    assert len(list(tables["trials"].glob("*.parquet"))) == 5  # a part per trial (5 algorithms, one chunk)
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing to run" in capsys.readouterr().out
    for table, directory in tables.items():  # no Ray started, the loose parts compacted, every row once
        (part,) = directory.glob("*.parquet")
        assert part.name.startswith("c-")
        after = pd.read_parquet(directory).sort_values(["algorithm", "lr"] + ["step"] * (table == "steps"))
        pd.testing.assert_frame_equal(after[before[table].columns].reset_index(drop=True), before[table])


def test_checkpointed_epoch_whose_row_was_never_written_is_recovered(ray_session, data_dir, gan_cache, tmp_path, capsys,
                                                                     monkeypatch):
    """The driver killed after Train registered the last epoch's checkpoint but before it wrote that
    epoch's row and the trial row: the rerun restores the finished run, replays the row, and the
    trial row carries the last epoch's metrics (not an empty row)."""
    from orchestrator.cli import main
    from orchestrator.results import read_table
    from orchestrator.results.store import ResultStore

    args = ["run", "gan", "--results", str(tmp_path), "--data-dir", data_dir, "--no-dashboard",
            "--set", f"cache_dir={gan_cache}", "--set", "train_images=128", "--set", "epochs=2",
            "--set", "sample_epochs=2", "--set", "fid_images=100", "--set", "num_workers=1"]
    with monkeypatch.context() as patched:  # the state of a run killed before its end: nothing compacted
        patched.setattr(ResultStore, "compact_run", lambda *args: 0)
        assert main(args) == 0
    steps_dir, trials_dir = tmp_path / "gan" / "steps.parquet", tmp_path / "gan" / "trials.parquet"
    before = read_table(steps_dir).set_index("epoch")  # parts differ in columns (fid at sample epochs only)
    (last,) = [p for p in steps_dir.glob("*.parquet") if p.stem.endswith("000002")]
    last.unlink()
    for part in trials_dir.glob("*.parquet"):
        part.unlink()
    assert main(args) == 0
    steps = read_table(steps_dir).set_index("epoch")
    assert sorted(steps.index) == [1, 2] and steps.loc[2, "fid"] == before.loc[2, "fid"]  # the replayed row
    (row,) = pd.read_parquet(trials_dir).to_dict("records")
    assert row["status"] == "TERMINATED" and row["resumed_from_epoch"] == 2
    assert row["fid"] == before.loc[2, "fid"] and row["loss_d"] == before.loc[2, "loss_d"]
    assert row["code_version"] and row["attempt"] == row["trial_key"]


def test_kept_trials_of_another_code_version_are_named(ray_session, tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main
    from orchestrator.cli import run as cli_run

    args = ["run", "minimax", "--results", str(tmp_path), "--set", "num_lrs=20", "--set", "steps=50"]
    assert main(args) == 0
    assert set(pd.read_parquet(tmp_path / "minimax" / "trials.parquet")["code_version"]) == {cli_run.code_version()}
    monkeypatch.setattr(cli_run, "code_version", lambda: "0123456789ab")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "5 of 5 kept trials were computed by another code version" in out and "--fresh reruns them" in out
    assert out.count("another code version") == 1  # one line per study
