"""The cloud path end to end on a local autoscaling cluster (Ray's fake multi-node provider, shaped
like cluster.yaml): `run all` at tiny settings with GPU-shaped scaling, submitted with `ray job
submit`. Worker nodes start from zero; the GPU studies run on GPU-type nodes (declared GPUs without
CUDA: ORCHESTRATOR_ALLOW_CPU_FALLBACK=1, the rows say so), minimax on the head or CPU-type nodes;
each table lands once on the shared storage; the report renders; the job ends SUCCEEDED. Not shown
here: real AWS, real GPUs, cluster.yaml's setup commands (see docs/clusters.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.results import read_table
from tests.fake_cluster import FakeCluster, job_end, started_with_cache, submit_job
from tests.test_chaos import TINY_ALL

ROOT = Path(__file__).resolve().parents[1]
GPU_SHAPED = [*TINY_ALL, "--set", "gan.use_gpu=true", "--set", "clip.use_gpu=true", "--set", "clip.num_workers=1",
              "--set", "clip.cpus_per_worker=1"]


def submit_run_all(cluster: FakeCluster, results: Path, data_dir: str, extra=()) -> str:
    data_dir = str(Path(data_dir).resolve())  # the job runs in its own copy of the working dir
    entry = ["python", "-m", "orchestrator", "run", "all", "--results", str(results), "--data-dir", data_dir,
             "--no-dashboard", *GPU_SHAPED, *extra]
    return submit_job(cluster, entry, {"ORCHESTRATOR_ALLOW_CPU_FALLBACK": "1"})


@pytest.fixture(scope="module")
def cluster(gan_cache, tmp_path_factory):
    with started_with_cache(tmp_path_factory.mktemp("shared"), gan_cache) as fake:
        yield fake


@pytest.mark.slow
def test_run_all_as_a_ray_job_on_an_autoscaling_cluster(cluster, data_dir):
    (head,) = [n for n in cluster.nodes() if n["alive"]]  # worker nodes start from zero
    results = cluster.shared / "results"
    job = submit_run_all(cluster, results, data_dir)
    status, logs = job_end(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    # what the terminal says while nodes come is timing-dependent here (fake nodes boot in about a
    # second): the watcher's lines are unit-tested (test_cloud_path.py); here only that CPU work
    # never waited for a GPU node
    minimax_part = logs.split("[minimax] 15 trials")[0]
    assert "GPU node" not in minimax_part
    # ~2 s of compute in all: run on the head's CPU slot free now rather than on nodes booted for them
    assert "[minimax] 15 short trials" in minimax_part and "on the 1 CPU slot free now" in minimax_part, minimax_part[-2000:]

    nodes = {n["id"]: n for n in cluster.nodes()}
    gpu_nodes = {i for i, n in nodes.items() if n["resources"].get("GPU", 0) > 0}
    cpu_nodes = {i for i, n in nodes.items() if i != head["id"] and i not in gpu_nodes}
    assert len(gpu_nodes) >= 1  # started by the autoscaler for the Train runs' placement groups

    minimax = read_table(results / "minimax" / "trials.parquet")
    assert len(minimax) == 5 * 300 and not minimax.duplicated(["algorithm", "lr"]).any()
    assert set(minimax["node_id"]) <= cpu_nodes | {head["id"]}  # never on a GPU node
    for study, count in (("gan", 1), ("clip", 3)):  # GAN: a Train run; CLIP: 3 frozen pairs, plain Tune trials
        trials = read_table(results / study / "trials.parquet")
        steps = read_table(results / study / "steps.parquet")
        assert len(trials) == count
        for row in trials.to_dict("records"):
            assert row["status"] == "TERMINATED" and row["node_id"] in gpu_nodes
            assert row["device"] == "cpu" and row["cpu_fallback"]  # honest: no CUDA behind the declared GPU
            assert row["code_version"] and row["ray_version"] and row["torch_version"]
        assert sorted(steps["epoch"]) == sorted([1, 2, 3] * count)
    gan = read_table(results / "gan" / "trials.parquet").iloc[0]
    assert str(cluster.shared / "cache") == gan["cache_dir"]  # caches on the shared storage
    assert len(read_table(results / "clip" / "prompts.parquet")) == 3 * 5 * 9

    report = subprocess.run([sys.executable, "-m", "orchestrator", "report", "--results", str(results)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and (results / "report.html").stat().st_size > 10_000, report.stderr[-2000:]


@pytest.mark.slow
def test_a_trial_no_node_type_can_hold_fails_at_once_with_one_line(cluster, data_dir):
    job = submit_run_all(cluster, cluster.shared / "results-too-big", data_dir,
                         ["--set", "gan.cpus_per_worker=3", "--set", "minimax.num_lrs=10"])
    status, logs = job_end(cluster, job, timeout_s=300)
    assert status == "FAILED"
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no node type of this cluster can ever provide that" in errors[0], logs[-3000:]
