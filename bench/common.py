"""What the benchmarks share: timing a fresh process, and the bare Ray start/stop they compare with."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of one fresh process, output discarded."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bare_ray_command() -> list[str]:
    """A process that only starts and stops Ray, with the arguments a local run uses (dashboard on)."""
    from orchestrator.engine.session import init_kwargs

    code = f"import json, ray; ray.init(**json.loads({json.dumps(init_kwargs())!r})); ray.shutdown()"
    return [sys.executable, "-c", code]
