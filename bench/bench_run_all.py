"""`run all --profile local` end to end, and the cost of resuming a finished run, side by side.

    python bench/bench_run_all.py [--data-dir DIR]

Measured in one run, each a fresh process: (1) `run all` into an empty results directory, (2) the
same command again (every trial already finished: it should cost little more than starting Ray),
(3) a bare process that only starts and stops Ray with the same arguments. Prints the times and the
ratio resume / bare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.ray_backend import init_kwargs  # noqa: E402


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCHESTRATOR_DATA_DIR": args.data_dir}
    bare_code = f"import json, ray; ray.init(**json.loads({json.dumps(init_kwargs())!r})); ray.shutdown()"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "orchestrator", "run", "all", "--results", f"{tmp}/results"]
        full = timed(cmd, env)
        resume = timed(cmd, env)
        bare = timed([sys.executable, "-c", bare_code], env)
    print(f"run all --profile local (fresh results)  : {full:7.1f} s")
    print(f"same command again (all trials finished) : {resume:7.1f} s")
    print(f"bare ray.init + shutdown                 : {bare:7.1f} s")
    print(f"resume / bare                            : {resume / bare:.2f}")


if __name__ == "__main__":
    main()
