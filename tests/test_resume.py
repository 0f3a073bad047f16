"""Killing the driver of a run and running the same command again finishes only what is missing:
the finished epochs are kept, the Train run resumes from its last checkpoint, each epoch appears
once. A real process is killed (SIGKILL to the whole process group), nothing is mocked."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_killed_run_resumes_from_its_checkpoint(data_dir, gan_cache, tmp_path):
    results, cache = tmp_path / "results", gan_cache
    cmd = [sys.executable, "-m", "orchestrator", "run", "gan", "--results", str(results), "--data-dir", data_dir,
           "--no-dashboard", "--set", f"cache_dir={cache}", "--set", "train_images=640", "--set", "epochs=3",
           "--set", "sample_epochs=3", "--set", "fid_images=200", "--set", "num_workers=1",
           "--set", "cpus_per_worker=2"]
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's
    steps_dir = results / "gan" / "steps.parquet"
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (steps_dir.exists() and any(steps_dir.glob("*.parquet"))):
            assert first.poll() is None, "the first run ended before it could be interrupted"
            time.sleep(0.5)
        assert any(steps_dir.glob("*.parquet")), "no epoch finished in time"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and every Ray process it started
        first.wait()
    assert not (results / "gan" / "trials.parquet").exists() or not any((results / "gan" / "trials.parquet").glob("*.parquet"))

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    trials = pd.read_parquet(results / "gan" / "trials.parquet")
    steps = pd.read_parquet(steps_dir)
    assert len(trials) == 1 and trials["status"].iloc[0] == "TERMINATED"
    assert trials["resumed_from_epoch"].iloc[0] >= 1  # it went on from a checkpoint, not from scratch
    assert sorted(steps["epoch"]) == [1, 2, 3]  # each epoch once, across the two runs
    assert steps["run_id"].nunique() == 2

    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert third.returncode == 0 and "nothing to run" in third.stdout
    assert len(pd.read_parquet(results / "gan" / "trials.parquet")) == 1
