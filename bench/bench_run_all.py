"""`run all --profile local` end to end, and the cost of resuming a finished run, side by side.

    python bench/bench_run_all.py [--data-dir DIR]

Measured in one run, each a fresh process: (1) `run all` into an empty results directory, (2) the
same command again (every trial already finished: it should cost little more than starting Ray),
(3) a bare process that only starts and stops Ray with the same arguments. Prints the times and the
ratio resume / bare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from common import ROOT, bare_ray_command, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCHESTRATOR_DATA_DIR": args.data_dir}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "orchestrator", "run", "all", "--results", f"{tmp}/results"]
        full = timed(cmd, env)
        resume = timed(cmd, env)
        bare = timed(bare_ray_command(), env)
    print(f"run all --profile local (fresh results)  : {full:7.1f} s")
    print(f"same command again (all trials finished) : {resume:7.1f} s")
    print(f"bare ray.init + shutdown                 : {bare:7.1f} s")
    print(f"resume / bare                            : {resume / bare:.2f}")


if __name__ == "__main__":
    main()
