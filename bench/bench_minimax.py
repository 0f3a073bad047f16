"""`python -m orchestrator run minimax` vs a bare Python process that only starts and stops Ray.

Both are fresh processes started the same way and start Ray with the same arguments (dashboard on,
as a user's run does), alternated `--repeats` times; medians and their ratio are printed from this
one run. Target: ratio <= 2.5.

    python bench/bench_minimax.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from common import bare_ray_command, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(timed(bare_ray_command(), env))
            full.append(timed([sys.executable, "-m", "orchestrator", "run", "minimax", "--results", f"{tmp}/r{i}"], env))
    b, f = statistics.median(bare), statistics.median(full)
    print(f"bare ray.init + shutdown : median {b:6.2f} s  ({', '.join(f'{t:.2f}' for t in bare)})")
    print(f"run minimax (local)      : median {f:6.2f} s  ({', '.join(f'{t:.2f}' for t in full)})")
    print(f"ratio run/bare           : {f / b:.2f}  (target <= 2.5)")


if __name__ == "__main__":
    main()
