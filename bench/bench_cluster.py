"""The cloud path on a local autoscaling cluster (Ray's fake multi-node provider, shaped like
cluster.yaml: a 1-CPU head with no GPU, CPU and GPU worker types at 0 nodes), end to end.

    python bench/bench_cluster.py [--data-dir DIR]

Submits `run all` at tiny settings with GPU-shaped scaling through `ray job submit` (declared GPUs
without CUDA: ORCHESTRATOR_ALLOW_CPU_FALLBACK=1), waits for the job, and prints when the first trial
row landed, the job's wall time, how many worker nodes the autoscaler started and how many rows
the tables hold; last line: `cluster: first trial after X s, run all Y s, nodes started N, rows R`.
Fake nodes boot in seconds; AWS GPU nodes take minutes: X is this machine's, not the cloud's.
Stops only the processes it started (by the cluster's own temp dir).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT

from orchestrator.results import read_table
from tests.fake_cluster import FakeCluster
from tests.test_cluster_e2e import submit_run_all, wait_for_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", default="", help="a cache holding FashionMNIST and the FID classifier (else built)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp) / "shared"
        if args.cache:
            shutil.copytree(args.cache, shared / "cache")
        cluster = FakeCluster(shared)
        first_row: list[float] = []
        try:
            cluster.start()
            head = [n["id"] for n in cluster.nodes() if n["alive"]]
            results = shared / "results"
            started = time.perf_counter()
            job = submit_run_all(cluster, results, str(Path(args.data_dir).resolve()))

            def watch() -> None:  # when does the first trial row land?
                while not first_row and time.perf_counter() - started < 1200:
                    if any(results.glob("*/trials.parquet/*.parquet")):
                        first_row.append(time.perf_counter() - started)
                    time.sleep(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            status, logs = wait_for_job(cluster, job, timeout_s=1200)
            total = time.perf_counter() - started
            first_row.append(float("nan"))
            nodes = [n for n in cluster.nodes() if n["id"] not in head]
            rows = sum(len(read_table(p)) for p in results.glob("*/*.parquet") if p.is_dir() and p.name != "runs.parquet")
            waits = [line for line in logs.splitlines() if "waiting for" in line]
            print(f"job {job}: {status}; worker nodes started: {len(nodes)} "
                  f"({sum(1 for n in nodes if n['resources'].get('GPU'))} GPU-type)")
            for line in waits[:5]:
                print(f"  {line}")
        finally:
            cluster.stop()
        print(f"cluster: first trial after {first_row[0]:.1f} s, run all {total:.1f} s, nodes started {len(nodes)}, rows {rows}")


if __name__ == "__main__":
    main()
