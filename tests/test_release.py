"""What ends a Train trial gives its resources back: ASHA's early stops, the run's own stop; and a run
on a Ray that never grows, waiting for resources no trial of it holds, ends within max_wait_s."""

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from orchestrator.cli import main


def _leftovers(ray) -> dict:
    """What this job still holds: CPUs in use, live placement groups with CPUs, live Train cleaners."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    from orchestrator.engine import reclaim

    job = ray.get_runtime_context().get_job_id()
    groups = [g for g in reclaim.group_table() if g.creator_job_id.hex() == job
              and g.state != gcs_pb2.PlacementGroupTableData.REMOVED
              and any(b.unit_resources.get("CPU", 0) for b in g.bundles)]
    cleaners = [a for a in state.actor_table(None).values()
                if a["ActorClassName"].endswith("PlacementGroupCleaner") and a["State"] == "ALIVE"]
    used = ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0)
    return {"cpus_in_use": used, "groups": len(groups), "cleaners": len(cleaners)}


def _settled(ray, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (left := _leftovers(ray)) != {"cpus_in_use": 0, "groups": 0, "cleaners": 0} and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


ASHA = ["--sweep", "lr=2e-4,3e-4,1e-6,5e-4", "--set", "epochs=3", "--set", "sample_epochs=1,2,3",
        "--set", "train_images=320", "--set", "fid_images=100", "--set", "num_workers=1", "--scheduler", "asha",
        "--no-dashboard"]


def test_an_asha_sweep_of_more_train_trials_than_fit_finishes_every_trial(ray_session, data_dir, gan_cache,
                                                                          tmp_path, capsys):
    """The issue's sweep, smaller: 4 one-worker GAN trials on 2 CPUs (2 at a time) with no dashboard,
    so Train's own cleaner could not see its controllers die (the product leaves it out). Every stopped
    trial's worker group is given back: the last trial starts and every trial has its row."""
    results = tmp_path / "results"
    assert main(["run", "gan", "--results", str(results), "--data-dir", data_dir, "--set", f"cache_dir={gan_cache}",
                 *ASHA]) == 0
    out = capsys.readouterr().out
    trials = pd.read_parquet(results / "gan" / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) <= {"TERMINATED", "STOPPED"}
    stopped = int((trials["status"] == "STOPPED").sum())
    assert stopped >= 1 and "stopped early by asha" in out
    assert "released 1 placement group of ended trials (1 CPU" in out  # said when it happened
    assert _settled(ray_session) == {"cpus_in_use": 0, "groups": 0, "cleaners": 0}


def test_a_run_stopped_by_a_failed_write_gives_its_workers_back(ray_session, data_dir, gan_cache, tmp_path, capsys,
                                                                monkeypatch):
    import pyarrow.parquet as pq

    real = pq.write_table

    def full(table, where, *args, **kwargs):
        if "steps.parquet" in str(where):
            raise OSError(28, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    code = main(["run", "gan", "--results", str(tmp_path / "results"), "--data-dir", data_dir,
                 "--set", f"cache_dir={gan_cache}", "--set", "epochs=3", "--set", "sample_epochs=3",
                 "--set", "train_images=320", "--set", "fid_images=100", "--set", "num_workers=1", "--no-dashboard"])
    assert code == 2 and "No space left on device" in capsys.readouterr().err
    assert _settled(ray_session) == {"cpus_in_use": 0, "groups": 0, "cleaners": 0}


def test_a_wait_for_resources_no_trial_of_the_run_holds_ends_within_max_wait(ray_session, tmp_path):
    """Another job (this test) holds both CPUs of a Ray without an autoscaler: a run joining it (its own
    job) waits for them, says what holds them, and ends after max_wait_s with that line, exit 2."""
    from ray.util.placement_group import placement_group, remove_placement_group

    holder = placement_group([{"CPU": 2}])
    ray_session.get(holder.ready(), timeout=30)
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "minimax", "--results", str(tmp_path / "results"),
             "--address", ray_session.get_runtime_context().gcs_address, "--set", "num_lrs=4", "--set", "steps=20",
             "--set", "max_wait_s=5"],
            capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_ADDRESS": ""})
        took = time.monotonic() - started
    finally:
        remove_placement_group(holder)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and "gave up after waiting" in err[0] and "max_wait_s=5" in err[0]
    assert "no trial of this run holds" in err[0] and "2 of 2 CPU in use" in err[0]
    assert "placement group(s) of other jobs" in err[0]
    assert took < 120  # the wait limit, not a hang (Ray's start and exit take the rest)
    assert "waiting for resources that no trial of this run holds" in proc.stdout


@pytest.fixture(autouse=True)
def _nothing_left_before(ray_session):
    """Each test starts from a Ray with nothing of this job held (earlier tests may have run trials)."""
    _settled(ray_session)
