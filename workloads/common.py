"""Helpers shared by the torch workloads: data/cache directories, seeding, image grids."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
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


def native_bf16(device) -> bool:
    """Does `device` run bf16 natively: a CUDA GPU with bf16 (Ampere and later; not T4/V100), or a CPU
    with AVX512-BF16 or AMX (oneDNN's bf16 kernels; elsewhere bf16 is emulated and no faster than fp32)?"""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere on
    return kind == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def uses_bf16(device, enabled: bool = True) -> bool:
    """The one bf16 policy of every loop (GAN and CLIP training, feature extraction): forwards run
    under bf16 autocast when the config asks (`amp`) and `device` runs bf16 natively."""
    return bool(enabled) and native_bf16(device)


def bf16_autocast(device, enabled: bool = True):
    """bf16 autocast of forwards under the policy of uses_bf16, else nothing.
    Measured on this machine's 2 cores (AMD EPYC, AVX512-BF16; bench/bench_bf16.py): a GAN training step
    x1.6, EfficientNet-Lite0/Lite2 features x2.3/x2.2, MiniLM x2.1; features' cosine to fp32 >= 0.9995."""
    import torch

    if uses_bf16(device, enabled):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_grid(images, path: Path, nrow: int = 8, captions: list[str] | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] -> one PNG grid, written atomically."""
    import torchvision.utils as vutils

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        vutils.save_image(images, tmp, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


_SAID_AT: dict[str, float] = {}  # say_progress: when each counted step last said how far


def say_progress(say, what: str, done: int, total: int, started: float, every_s: float = 10.0) -> None:
    """A line every ~10 s of a long counted step (decoding, extraction): how far, how fast, how long
    left; the count as `progress=(what, done, total)`, which a terminal shows as a bar."""
    if not say:
        return
    done = min(done, total)
    elapsed = time.perf_counter() - started
    last = _SAID_AT.get(what, 0.0)  # per counted thing: steps that interleave each get their lines
    if done < total and time.perf_counter() - last < every_s:
        return
    _SAID_AT[what] = time.perf_counter()
    rate = done / max(elapsed, 1e-9)
    say(f"{what} {done}/{total} ({rate:.0f}/s, ~{(total - done) / max(rate, 1e-9):.0f} s left)",
        progress=(what, done, total))
