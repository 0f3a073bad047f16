"""Chaos benchmark: `run all` at tiny settings, interrupted K times at random moments, compared with
an uninterrupted run of the same settings.

    python bench/bench_chaos.py [--interruptions 6] [--seed 1] [--data-dir DIR]

Each interruption is one of Ctrl-C (SIGINT), SIGTERM, SIGKILL of the driver's process group, or
SIGKILL of one Train worker (kinds in a shuffled cycle, so K >= 4 covers all four), after a random
delay; after each the same command runs again, until one completes. Then every table must hold the
reference run's rows, each once, no part may be torn or temporary, and minimax's report must equal
the reference's. Prints the timeline, then last: `chaos: K interruptions survived, rows lost L,
duplicates D`. Signals go only to processes this script started (see tests/chaos.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

from tests.chaos import compare_tables, report_numbers, run_with_chaos
from tests.test_chaos import run_all


def report(results: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "report", "minimax", "--results", str(results)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return report_numbers(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0", "ORCHESTRATOR_CACHE_DIR": str(tmp / "cache")}
        started = time.perf_counter()
        subprocess.run(run_all(tmp / "reference", args.data_dir), cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"uninterrupted run: {time.perf_counter() - started:.1f} s (builds the caches)")
        log = run_with_chaos(run_all(tmp / "chaos", args.data_dir), env, ROOT, args.interruptions, args.seed,
                             tmp / "logs")
        diff = compare_tables(tmp / "reference", tmp / "chaos")
        same = report(tmp / "chaos") == report(tmp / "reference")
        print(f"attempts: {len(log.attempts)} (exit codes {log.attempts}), {log.seconds:.1f} s in all; "
              f"hung after SIGINT/SIGTERM: {log.hung}")
        print(f"torn parts: {len(diff.torn)}, temporary files left: {len(diff.temporaries)}, "
              f"minimax report equal to the uninterrupted run's: {same}")
        for line in diff.details:
            print(f"  {line}")
        survived = len(log.interruptions) if log.attempts and log.attempts[-1] == 0 and same and not diff.torn else 0
        print(f"chaos: {survived} interruptions survived, rows lost {diff.lost}, duplicates {diff.duplicates}, "
              f"values differing {diff.differing}")


if __name__ == "__main__":
    main()
