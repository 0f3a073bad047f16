"""Spot reclaims on the cluster `ray up` builds (autoscaler v2), simulated on one machine: a GAN trial
on a GPU-type spot node is drained for preemption and its node killed, three times in one run; a
node killed with no notice; four GAN trials packed on one GPU node reclaimed at once; a CPU node
lost mid-minimax. The job must end SUCCEEDED, every epoch and row land exactly once, and the trial
rows say what they survived. Not shown here: real AWS spot notices and real GPUs (docs/clusters.md)."""

from pathlib import Path

import pytest

from orchestrator.results import ResultStore
from tests.fake_cluster import CPU_TYPE, job_end, started_with_cache, stop_job
from tests.spot import actor_nodes, kill_node, reclaim_train_nodes, submit, wait_for

pytestmark = pytest.mark.slow
EPOCHS = 8  # four reclaims, each after a new epoch's row, with epochs to spare
# ~50 steps of 64 images per epoch: an epoch takes seconds on a CPU, long enough to be cut in the middle
GAN = ["--set", "use_gpu=true", "--set", "num_workers=1", "--set", "cpus_per_worker=1", "--set", f"epochs={EPOCHS}",
       "--set", "train_images=3200", "--set", f"sample_epochs={EPOCHS}", "--set", "fid_images=200", "--no-dashboard"]


@pytest.fixture(scope="module")
def cluster(gan_cache, tmp_path_factory):
    with started_with_cache(tmp_path_factory.mktemp("shared"), gan_cache) as fake:
        yield fake


def run_gan(cluster, results: Path, data_dir: str, extra=()) -> str:
    return submit(cluster, ["run", "gan", "--results", str(results), "--data-dir", str(Path(data_dir).resolve()),
                            *GAN, *extra])


def assert_each_epoch_once(results: Path) -> dict:
    store = ResultStore(results)
    steps, trials = store.read("gan", "steps"), store.read("gan", "trials")
    assert sorted(steps["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch exactly once
    (row,) = trials.to_dict("records")
    assert row["status"] == "TERMINATED" and row["epochs_done"] == EPOCHS
    return row


def test_a_gan_trial_survives_three_preemptions_and_a_kill_without_notice(cluster, data_dir):
    """Three notices, each followed by the node's death, then a node killed with no notice: the
    run resumes mid-epoch from each notice's checkpoint, then from the last epoch's checkpoint
    (within max_failures), and ends with every epoch once."""
    results = cluster.shared / "results"
    job = run_gan(cluster, results, data_dir)
    try:
        reclaims = reclaim_train_nodes(cluster, results, "gan", notices=[True, True, True, False])
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- the job's log ---\n{stop_job(cluster, job)}") from exc
    status, logs = job_end(cluster, job)
    print(logs)  # shown when the test fails
    assert status == "SUCCEEDED", logs[-4000:]
    row = assert_each_epoch_once(results)
    assert row["preemptions"] == 3 and row["restarts"] >= 4, row  # 3 preemptions, 1 failure
    assert row["node_types"] == "gpu.spot.1x" and row["gpu_seconds"] > 0
    assert reclaims.notices == 3 and reclaims.kills == 4
    # each resume from the latest checkpoint: the notice's, mid-epoch, or the epoch's that ended between
    # the notice and the kill; the kill without notice: the last epoch's
    assert logs.count("resumed in epoch") >= 1 and logs.count(" (resumed ") == 4, logs[-4000:]


def test_four_gan_trials_packed_on_one_reclaimed_node_all_finish(cluster, data_dir):
    """Four trials of a quarter GPU each share one GPU node; its reclaim notices all four Train runs,
    each saves a checkpoint, and all four resume on the next node."""
    results = cluster.shared / "results-packed"
    # three epochs: the reclaim comes after the first epoch's row, and a trial trains on after its notice
    # until the node dies (as on AWS, within the notice's deadline) with two epochs left, so none ends
    # before the kill however unevenly the four share the CPUs
    job = run_gan(cluster, results, data_dir, ["--set", "epochs=3", "--set", "sample_epochs=3", "--set",
                                               "train_images=1920", "--set", "gpus_per_worker=0.25",
                                               "--set", "cpus_per_worker=0.5", "--sweep", "lr=1e-4,2e-4,3e-4,4e-4"])
    try:
        wait_for(lambda: len(actor_nodes(cluster, "RayTrainWorker")) == 4, 300, "four running Train workers")
        assert len(set(actor_nodes(cluster, "RayTrainWorker"))) == 1, "the four trials are not packed on one node"
        reclaims = reclaim_train_nodes(cluster, results, "gan", notices=[True])
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- the job's log ---\n{stop_job(cluster, job)}") from exc
    status, logs = job_end(cluster, job)
    print(logs)
    assert status == "SUCCEEDED", logs[-4000:]
    assert reclaims.runs_noticed == [4]
    store = ResultStore(results)
    steps, trials = store.read("gan", "steps"), store.read("gan", "trials")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials
    for key, own in steps.groupby("trial_key"):
        assert sorted(own["epoch"]) == [1, 2, 3], (key, list(own["epoch"]))
    assert (trials["preemptions"] == 1).all(), trials[["trial_name", "preemptions", "restarts"]]


MINIMAX = ["--no-dashboard", "--set", "steps=600000", "--set", "lr_min=1e-7", "--set", "lr_max=1e-6",
           "--set", "num_lrs=20",  # lrs so small no lane ends early: each trial runs ~10 s alone
           "--set", "node_boot_s=5"]  # fake nodes boot in seconds: 5 trials of ~10 s are worth a CPU node


def test_a_cpu_node_lost_mid_minimax_costs_a_retry_not_a_row(cluster):
    """A CPU-type node dies (no notice) while minimax trials run on it: Tune retries them, and every
    (algorithm, lr) row and step lands exactly once."""
    from workloads import minimax

    results = cluster.shared / "results-minimax"
    cpu_nodes = lambda: {n["id"] for n in cluster.nodes() if n["alive"] and n["resources"].get("cpu_node")  # noqa: E731
                         and not n["resources"].get("train_driver")}

    def busy_cpu_node():  # a CPU-type node running a trial while no trial has ended yet
        if any((results / "minimax" / "trials.parquet").glob("*.parquet")):
            raise AssertionError("a minimax trial ended before one was seen running on a CPU-type node")
        busy = [n for n in actor_nodes(cluster, "ImplicitFunc") if n in cpu_nodes()]
        return busy[0] if busy else None

    job = submit(cluster, ["run", "minimax", "--results", str(results), *MINIMAX])
    try:
        node = wait_for(busy_cpu_node, 300, f"a minimax trial on a {CPU_TYPE} node")
        assert kill_node(node) > 0
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- the job's log ---\n{stop_job(cluster, job)}") from exc
    status, logs = job_end(cluster, job)
    print(logs)
    assert status == "SUCCEEDED", logs[-4000:]
    store = ResultStore(results)
    trials, steps = store.read("minimax", "trials"), store.read("minimax", "steps")
    lrs = len(minimax.Config(lr_min=1e-7, lr_max=1e-6, num_lrs=20).lr_grid())
    assert len(trials) == 5 * lrs and not trials.duplicated(["algorithm", "lr"]).any()
    assert not steps.duplicated(["algorithm", "lr", "step"]).any() and len(steps) == 5 * lrs * steps["step"].nunique()
    assert "failed, retried" in logs and trials["restarts"].max() >= 1, logs[-4000:]
