"""`run all --profile local` end to end: a first run on a fresh machine, a warm rerun, and resuming.

    python bench/bench_run_all.py [--data-dir DIR]

Measured in one run, each a fresh process: (1) `run all` with an empty cache (no extracted
FashionMNIST, no FID classifier, no decoded images or CLIP features: a fresh machine) into an empty
results directory; (2) the same command with `--fresh` (every trial reruns; caches warm); (3) the
same command once more (every trial already finished: it should cost little more than starting Ray);
(4) a bare process that only starts and stops Ray with the same arguments. Prints the times, the
targets (first run <= 15 min, warm rerun <= 8 min on a 2-core machine), the ratio resume / bare,
and where the first run's time went: each study's seconds from its summary line, and the rest (Ray's
start, preflight: FashionMNIST's extraction, the FID classifier's training, the report of no study).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from common import ROOT, bare_ray_command, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the results and cache here (to read the run's figures)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCHESTRATOR_DATA_DIR": args.data_dir,
               "ORCHESTRATOR_CACHE_DIR": f"{tmp}/cache"}  # empty: what a fresh machine has
        cmd = [sys.executable, "-m", "orchestrator", "run", "all", "--results", f"{tmp}/results"]
        started = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        first = time.perf_counter() - started
        warm = timed([*cmd, "--fresh"], env)
        resume = timed(cmd, env)
        bare = timed(bare_ray_command(), env)
    print(f"run all, empty cache and results (fresh machine) : {first:7.1f} s  (target <= 900)")
    print(f"run all --fresh, caches warm                     : {warm:7.1f} s  (target <= 480)")
    print(f"same command again (all trials finished)         : {resume:7.1f} s")
    print(f"bare ray.init + shutdown                         : {bare:7.1f} s")
    # the run's summary: "  minimax  1200/1200 rows ok ...   12 s", a line per study
    studies = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\w+)\s.*?\s(\d+) s$", out, re.M)}
    print("first run, per study: " + ", ".join(f"{k} {v:.0f} s" for k, v in studies.items())
          + f"; the rest (Ray, preflight: data extraction, the FID classifier) {first - sum(studies.values()):.0f} s")
    print(f"run_all: first {first:.0f} s, warm {warm:.0f} s, resume/bare {resume / bare:.2f}")


if __name__ == "__main__":
    main()
