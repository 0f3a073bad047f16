"""Spot reclaims of a GAN trial on the local autoscaling cluster (autoscaler v2, as `ray up` runs it).

    python bench/bench_spot.py [--data-dir DIR] [--preemptions 3] [--epochs 8]

Submits one GAN trial (GPU-shaped scaling, the CPU fallback) through `ray job submit`; each time a
steps row has landed since the last reclaim, drains the Train worker's node with reason PREEMPTION
(what orchestrator/clusters/spot_notice.py does on a real spot notice), waits for the checkpoint the
notice causes, then SIGKILLs the node's raylet and workers (tests/spot.py). At the end, from the
steps table: epochs lost (expected but absent) and epochs repeated (present more than once); the
recovery of each reclaim is the time from the kill to the next steps row (a new node booting, Train
restarting the worker group, the checkpoint loading, the rest of the interrupted epoch). Last line:
`spot: preemptions P, epochs lost L, epochs repeated R, recovery median X s`.
Fake nodes boot in seconds; AWS GPU nodes take minutes: recovery here is a floor, not the cloud's.
Stops only the processes it started (by the cluster's own temp dir).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import ROOT

from orchestrator.results import ResultStore
from tests.fake_cluster import FakeCluster, job_end, stop_job
from tests.spot import reclaim_train_nodes, submit


def gan_argv(results: Path, data_dir: str, epochs: int) -> list[str]:
    return ["run", "gan", "--results", str(results), "--data-dir", str(Path(data_dir).resolve()), "--no-dashboard",
            "--set", "use_gpu=true", "--set", "num_workers=1", "--set", "cpus_per_worker=1",
            "--set", f"epochs={epochs}", "--set", "train_images=3200", "--set", f"sample_epochs={epochs}",
            "--set", "fid_images=200"]


def build_cache(data_dir: str, cache: Path) -> None:
    """What tests/conftest.py's gan_cache builds: the extracted FashionMNIST and the FID classifier."""
    from workloads.gan import data, quality

    data.locate(data_dir, str(cache))
    quality.load_classifier(data_dir, str(cache))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--preemptions", type=int, default=3, help="reclaims, each a notice then the node's death")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp) / "shared"
        build_cache(args.data_dir, shared / "cache")  # before the clock: FashionMNIST and the FID classifier
        cluster = FakeCluster(shared)
        try:
            cluster.start()
            results = cluster.shared / "results"
            started = time.perf_counter()
            job = submit(cluster, gan_argv(results, args.data_dir, args.epochs))
            try:
                reclaims = reclaim_train_nodes(cluster, results, "gan", notices=[True] * args.preemptions)
            except BaseException as exc:
                raise SystemExit(f"bench_spot: {exc}\n--- the job's log ---\n{stop_job(cluster, job)}") from None
            status, logs = job_end(cluster, job)
            wall = time.perf_counter() - started
            store = ResultStore(results)
            epochs = Counter(store.read("gan", "steps")["epoch"])
            (row,) = store.read("gan", "trials").to_dict("records")
        finally:
            cluster.stop()
    lost = sum(1 for e in range(1, args.epochs + 1) if e not in epochs)
    repeated = sum(n - 1 for n in epochs.values())
    print(f"job: {status} in {wall:.0f} s; trial {row['status']}, epochs_done {row['epochs_done']}, "
          f"preemptions {row['preemptions']}, restarts {row['restarts']}, node types {row['node_types']}")
    print("recoveries (kill -> next steps row): " + ", ".join(f"{s:.1f} s" for s in reclaims.recoveries))
    if status != "SUCCEEDED":
        print(logs[-3000:])
    print(f"spot: preemptions {row['preemptions']}, epochs lost {lost}, epochs repeated {repeated}, "
          f"recovery median {statistics.median(reclaims.recoveries):.1f} s")


if __name__ == "__main__":
    main()
