"""Spot reclaims on the cluster `ray up` builds (autoscaler v2), simulated on one machine: a GAN trial
on a GPU-type spot node is drained for preemption and its node killed, three times in one run; a
node killed with no notice. The job must end SUCCEEDED, every epoch land exactly once, and the trial
row say what it survived. Not shown here: real AWS spot notices and real GPUs (docs/clusters.md)."""

import shutil
from pathlib import Path

import pytest

from orchestrator.results import ResultStore
from tests.fake_cluster import FakeCluster
from tests.spot import job_end, reclaim_train_nodes, stop_job, submit

pytestmark = pytest.mark.slow
EPOCHS = 10
# ~50 steps of 64 images per epoch: an epoch takes seconds on a CPU, long enough to be cut in the middle
GAN = ["--set", "use_gpu=true", "--set", "num_workers=1", "--set", "cpus_per_worker=1", "--set", f"epochs={EPOCHS}",
       "--set", "train_images=3200", "--set", f"sample_epochs={EPOCHS}", "--set", "fid_images=200", "--no-dashboard"]


@pytest.fixture(scope="module")
def cluster(gan_cache, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    shutil.copytree(gan_cache, shared / "cache")  # FashionMNIST and the FID classifier, built once before
    fake = FakeCluster(shared)
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


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
