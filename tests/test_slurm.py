"""cluster.sbatch on a real SLURM (Debian's slurm-wlm, two slurmd on this machine: tests/slurm.py):
a 2-node job runs a study with trials on both Ray nodes; `scontrol requeue` during a GAN job stops
it cleanly and the requeued job resumes with every epoch exactly once; an allocation too small for a
study's trials fails at once in one line. The Ray nodes share this host: the script gives each its
own ports and temp dir (real nodes need none of that)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.results import ResultStore
from tests.slurm import SlurmCluster, missing

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    why = missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(cpus=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def sbatch(slurm: SlurmCluster, tmp_path: Path, nodes: int, argv: list[str], wait: bool = True, env: dict | None = None):
    """Submit cluster.sbatch as a user would (the venv's bin first on PATH: sbatch exports it); returns
    (the finished sbatch --wait process, or the job id), and the job's log path."""
    log = tmp_path / "job.log"
    job_env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "ORCHESTRATOR_SLURM_DIR": str(tmp_path / "jobs"),
               "ORCHESTRATOR_RAY_TMPDIR": str(slurm.dir),  # Ray's temp dirs: stop() finds what is left
               # Ray exports metrics every second (10 s by default): where the script starts a Prometheus,
               # a run's end waits two intervals for its last values to be scraped
               "RAY_metrics_report_interval_ms": "1000", **(env or {})}
    job_env.pop("RAY_ADDRESS", None)
    cmd = ["sbatch", f"--nodes={nodes}", f"--output={log}", *(["--wait"] if wait else ["--parsable"]),
           str(ROOT / "cluster.sbatch"), *argv]
    done = subprocess.run(cmd, env=job_env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if wait:
        return done, log
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], log


def test_a_two_node_job_runs_a_study_on_both_nodes(slurm, tmp_path):
    results = tmp_path / "results"
    done, log = sbatch(slurm, tmp_path, 2, ["run", "minimax", "--results", str(results), "--no-dashboard",
                                            "--set", "num_lrs=600", "--set", "steps=20000"])
    text = log.read_text()
    assert done.returncode == 0, text[-4000:]
    assert "Ray on 2 node(s)" in text
    if shutil.which("prometheus"):  # .ci/run installs it: the script starts it beside the head
        assert "Prometheus ready on n1 at 127.0.0.1:" in text, text[-4000:]
    trials = ResultStore(results).read("minimax", "trials")
    assert len(trials) == 5 * 600 and not trials.duplicated(["algorithm", "lr"]).any()
    assert trials["node_id"].nunique() == 2, trials.groupby("node_id").size()  # both SLURM nodes' Ray ran trials
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())  # the token went with the job


@pytest.mark.parametrize("interruption", ["time limit", "requeue"])
def test_an_interrupted_gan_job_is_requeued_and_resumes_each_epoch_once(slurm, tmp_path, gan_cache, data_dir,
                                                                       interruption):
    """time limit: the SIGUSR1 that --signal asks for before the limit (sent here with scancel): the run
    stops cleanly and the job requeues itself. requeue: `scontrol requeue` (as preemption does): SLURM
    sends SIGTERM to every step, Ray goes with the run. Either way the requeued job resumes."""
    results, cache = tmp_path / "results", tmp_path / "cache"
    shutil.copytree(gan_cache, cache)
    epochs = 4
    job, log = sbatch(slurm, tmp_path, 2, ["run", "gan", "--results", str(results), "--data-dir", data_dir,
                                           "--no-dashboard", "--set", f"cache_dir={cache}", "--set", "num_workers=1",
                                           "--set", f"epochs={epochs}", "--set", "train_images=1280",
                                           "--set", f"sample_epochs={epochs}", "--set", "fid_images=200"], wait=False)
    steps_dir = results / "gan" / "steps.parquet"
    deadline = time.time() + 600
    while time.time() < deadline and not any(p for p in steps_dir.glob("*.parquet") if not p.name.startswith(".")):
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), log.read_text()[-3000:]
        time.sleep(1)
    if interruption == "time limit":
        slurm.run("scancel", "--batch", "--signal=USR1", job)
    else:
        slurm.scontrol("requeue", job)
    while time.time() < deadline and slurm.job_state(job) != "COMPLETED":  # requeued jobs wait cred_expire (10 s)
        assert slurm.job_state(job) not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), log.read_text()[-4000:]
        time.sleep(2)
    text = log.read_text()
    assert slurm.job_state(job) == "COMPLETED", text[-4000:]
    if interruption == "time limit":  # the run stopped itself, then the job requeued itself
        assert "USR1: stopping the run" in text and f"requeueing job {job}" in text, text[-4000:]
    else:
        assert "TERM: stopping the run" in text, text[-4000:]
    assert text.count("Ray on 2 node(s)") == 2  # and the job ran again
    store = ResultStore(results)
    steps, trials = store.read("gan", "steps"), store.read("gan", "trials")
    assert sorted(steps["epoch"]) == list(range(1, epochs + 1)), steps[["epoch", "run_id"]]  # each epoch once
    assert steps["run_id"].nunique() == 2  # the requeued run went on from the first run's checkpoint
    # the stopped run's row (ABORTED) stays on record beside the requeued run's
    assert trials["trial_key"].nunique() == 1 and list(trials.sort_values("run_id")["status"])[-1] == "TERMINATED"
    assert set(trials["status"]) <= {"ABORTED", "TERMINATED"} and len(trials) <= 2, trials[["run_id", "status"]]


def test_an_allocation_too_small_for_a_trial_fails_in_one_line(slurm, tmp_path):
    done, log = sbatch(slurm, tmp_path, 1, ["run", "minimax", "--results", str(tmp_path / "results"), "--no-dashboard",
                                            "--set", "cpus_per_worker=2"])
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert done.returncode == 2, log.read_text()[-3000:]
    assert len(errors) == 1 and "x 2 CPU; this allocation has 1 node with 1 CPU, 0 GPU in all" in errors[0], errors
    assert not (tmp_path / "results" / "minimax" / "trials.parquet").exists()
