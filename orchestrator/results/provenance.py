"""Where a row came from: the code version, and the software and devices that produced it.

`code_version()` is the git commit of this checkout (`+dirty` when tracked files differ from it), or
the installed package's version where there is no checkout (a wheel, a Ray job's uploaded copy
without `.git`). `ORCHESTRATOR_CODE_VERSION` overrides both (e.g. set by `ray job submit
--runtime-env-json` to the submitting checkout's commit).
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: orchestrator/results/provenance.py -> ../..
VERSION_ENV = "ORCHESTRATOR_CODE_VERSION"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    if os.environ.get(VERSION_ENV):
        return os.environ[VERSION_ENV]
    if (ROOT / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            return f"{commit}+dirty" if dirty else commit
        except (OSError, subprocess.SubprocessError):
            pass
    return f"orchestrator-{package_version('orchestrator')}"


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """An installed distribution's version, without importing it ("" when absent); once per process (a
    metadata lookup scans site-packages: ms, per trial of thousands)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
