"""FashionMNIST through torchvision, offline from a local folder or downloaded when online.

The original `.gz` files may sit in `<data_dir>/FashionMNIST/raw/`, `<data_dir>/raw/` or
`<data_dir>` itself. They are extracted into a cache the project owns (never next to the source,
which may be read-only), each file written to a temporary name and renamed, so concurrent workers
and killed runs never see a half-extracted file.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from workloads.common import DATA_ENV, atomic_path, build_lock, cache_root, data_root

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(FileNotFoundError):
    """Data is missing: the message says where it was looked for and how to provide it."""


def _source_dir(root: Path) -> Path | None:
    for candidate in (root / "FashionMNIST" / "raw", root / "raw", root):
        if all((candidate / f).exists() or (candidate / f"{f}.gz").exists() for f in FILES):
            return candidate
    return None


def locate(data_dir: str, cache_dir: str = "", say=None) -> Path:
    """The torchvision root holding extracted `FashionMNIST/raw/*`; extracts from a local copy if needed."""
    cache = cache_root(cache_dir)
    raw = cache / "FashionMNIST" / "raw"
    root = data_root(data_dir)
    # a data folder that was named is checked even when the cache already holds the data: a typo
    # must not train for minutes on whatever an earlier run extracted
    source = _source_dir(root) if root is not None else None
    if root is not None and source is None:
        raise DataError(
            f"FashionMNIST not found in {root} (looked in {root}/FashionMNIST/raw, {root}/raw and {root} for "
            f"{FILES[0]}[.gz] and its 3 siblings): point --data-dir or {DATA_ENV} at a folder holding them"
        )
    if all((raw / f).exists() for f in FILES):
        return cache
    if root is None:
        return _download(cache)
    raw.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"extracting FashionMNIST from {source} into {raw} (once for this cache)")
    with build_lock(raw / "extract"):  # one extractor at a time (shared caches on a cluster)
        for name in FILES:
            target = raw / name
            if target.exists():
                continue
            plain, packed = source / name, source / f"{name}.gz"
            with atomic_path(target) as tmp, (open(plain, "rb") if plain.exists() else gzip.open(packed, "rb")) as src, \
                    open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return cache


def _download(cache: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
    except Exception as exc:  # offline: urllib errors of many kinds
        raise DataError(
            f"FashionMNIST is not in {cache} and could not be downloaded ({type(exc).__name__}): set --data-dir or "
            f"{DATA_ENV} to a folder holding FashionMNIST/raw/*.gz"
        ) from None
    return cache


def load(data_dir: str, cache_dir: str, train: bool, limit: int = 0):
    """(images (N, 1, 28, 28) float in [-1, 1], labels (N,) int64) as tensors."""
    from torchvision.datasets import FashionMNIST

    dataset = FashionMNIST(str(locate(data_dir, cache_dir)), train=train, download=False)
    images, labels = dataset.data, dataset.targets  # uint8 (N, 28, 28), int64 (N,)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images.unsqueeze(1).float().div(127.5).sub(1.0), labels
