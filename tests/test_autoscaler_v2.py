"""The waits of the cloud path under autoscaler v2, the autoscaler `ray up` starts (Ray >= 2.50), on a
local autoscaling cluster: a trial waiting for a GPU node type says what it waits for in the
autoscaler's words, and a node type that cannot launch ends the run after max_wait_s with that
reason, in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_cluster import FakeCluster

pytestmark = pytest.mark.slow
REASON = "InsufficientInstanceCapacity: no spot capacity in us-west-2a"
NO_CAPACITY = {"gpu.nocap.4x": {"resources": {"CPU": 2, "GPU": 4}, "node_config": {"launch_error": REASON},
                                "min_workers": 0, "max_workers": 1},
               # beside the fake cluster's gpu.spot.1x: a 2-worker DDP trial fits one of these
               "gpu.ondemand.2x": {"resources": {"CPU": 2, "GPU": 2}, "node_config": {}, "min_workers": 0,
                                   "max_workers": 1}}


@pytest.fixture(scope="module")
def v2_cluster(tmp_path_factory):
    cluster = FakeCluster(tmp_path_factory.mktemp("shared"), extra_types=NO_CAPACITY)
    cluster.start()
    yield cluster
    cluster.stop()


def test_the_cluster_runs_autoscaler_v2(v2_cluster):
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); from ray.autoscaler.v2.utils import "
            "is_autoscaler_v2; print(is_autoscaler_v2(fetch_from_server=True))") % v2_cluster.address
    out = subprocess.run([sys.executable, "-c", code], env={**v2_cluster.env, "RAY_enable_autoscaler_v2": "0"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_a_node_type_that_cannot_launch_ends_the_run_with_the_autoscalers_reason(v2_cluster, data_dir, gan_cache,
                                                                                  tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "gan", "--address", v2_cluster.address, "--no-dashboard",
         "--results", str(tmp_path / "results"), "--data-dir", str(Path(data_dir).resolve()),
         "--set", f"cache_dir={gan_cache}", "--set", "epochs=1", "--set", "train_images=64", "--set", "fid_images=50",
         "--set", "use_gpu=true", "--set", "gpus_per_worker=4", "--set", "num_workers=1",
         "--set", "cpus_per_worker=1", "--set", "max_wait_s=15"],
        env=v2_cluster.env, capture_output=True, text=True, timeout=400)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2, (run.stdout + run.stderr)[-3000:]
    assert len(errors) == 1 and "gave up after waiting" in errors[0] and "max_wait_s=15" in errors[0]
    assert f"waiting for 1 GPU node (gpu.nocap.4x): LaunchFailed: {REASON}" in errors[0]
    # while it waited, the run said what for, in the same words
    assert f"[gan] waiting for 1 GPU node (gpu.nocap.4x): LaunchFailed: {REASON}" in run.stdout


def test_a_ddp_trial_lands_on_one_node_where_a_node_type_holds_it(v2_cluster, data_dir, gan_cache, tmp_path):
    """2 workers x 1 GPU: STRICT_PACK (capacity.placement_strategy) makes the autoscaler start one
    2-GPU node, not two 1-GPU spot nodes; the trial row names the one node type it ran on."""
    from orchestrator.results import ResultStore

    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "gan", "--address", v2_cluster.address, "--no-dashboard",
         "--results", str(results), "--data-dir", str(Path(data_dir).resolve()),
         "--set", f"cache_dir={gan_cache}", "--set", "epochs=1", "--set", "train_images=256", "--set", "fid_images=50",
         "--set", "use_gpu=true", "--set", "num_workers=2", "--set", "cpus_per_worker=1"],
        env={**v2_cluster.env, "ORCHESTRATOR_ALLOW_CPU_FALLBACK": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    (row,) = ResultStore(results).read("gan", "trials").to_dict("records")
    assert row["world_size"] == 2 and row["node_types"] == "gpu.ondemand.2x", row
    assert row["gpu_seconds"] == pytest.approx(2 * row["wall_time_s"])
