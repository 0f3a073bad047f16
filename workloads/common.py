"""Helpers shared by the torch workloads: data/cache directories, seeding, image grids."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

DATA_ENV = "ORCHESTRATOR_DATA_DIR"  # the folder holding FashionMNIST/ and flickr8k/
CACHE_ENV = "ORCHESTRATOR_CACHE_DIR"  # where extracted data and cached models go
TMP_MARK = ".tmp"  # in the name of every temporary file atomic_path writes (hidden: it starts with ".")


def data_root(configured: str) -> Path | None:
    """The data folder: the config's `data_dir`, else $ORCHESTRATOR_DATA_DIR, else None (download)."""
    chosen = configured or os.environ.get(DATA_ENV, "")
    return Path(chosen).expanduser().resolve() if chosen else None


def cache_root(configured: str = "") -> Path:
    chosen = configured or os.environ.get(CACHE_ENV, "") or "~/.cache/orchestrator"
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A hidden temporary sibling of `path` to write to, renamed onto `path` when the block succeeds
    (removed when it fails): readers, concurrent writers and killed runs see the old file or the whole
    new one, never a torn one. The suffix is kept, so writers that infer a format from it still work.
    The temporary name is unique across hosts (two nodes on one EFS can share a PID)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}{TMP_MARK}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(path: str | os.PathLike):
    """One builder of a cached file at a time, across processes and nodes: a lock file next to it
    (flock, which Linux NFS clients such as EFS's map to NFSv4 locks). Callers check again for the
    file once they hold the lock: another builder may have finished it meanwhile."""
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        yield


def save_grid(images, path: Path, nrow: int = 8, captions: list[str] | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] -> one PNG grid, written atomically."""
    import torchvision.utils as vutils

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        vutils.save_image(images, tmp, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
