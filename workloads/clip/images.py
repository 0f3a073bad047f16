"""Images decoded once: the input path that can feed a GPU.

Every image of a split is decoded, resized and centre-cropped to (size, size, 3) uint8 a single
time (the same PIL operations as `data.image_transform`), stored as one `.npy` array in the cache,
and memory-mapped by every trial, epoch and rank (and by every node when the cache is on shared
storage). A batch is a slice of that array; it crosses to the device as uint8 (4x fewer bytes than
float32) and is scaled and normalised there, landing in channels_last, the layout the image
encoders run in. Decoding a ~500x375 Flickr8k JPEG and resizing it takes a few milliseconds of one
core, so a GPU that trains ResNet-50 at well over 1000 images/s would starve on per-epoch decoding
(bench/bench_input.py measures both paths).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from workloads.common import atomic_path, build_lock, cache_root, say_progress

VERSION = 1  # bump when the decoding changes


def resize_crop(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: bicubic resize of the short side to `size`, centre crop, as data.image_transform."""
    from PIL import Image
    from torchvision import transforms

    from workloads.clip.data import DataError

    crop = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size)])
    try:
        with Image.open(path) as image:
            return np.asarray(crop(image.convert("RGB")), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image {path.name} in {path.parent}: {exc}") from None


CHUNK = 64  # images one decoding task handles


def _decode_chunk(args: tuple[str, list[str], int]) -> np.ndarray:
    root, names, size = args
    return np.stack([resize_crop(Path(root) / name, size) for name in names])


def image_array(root: Path, names: list[str], size: int, cache_dir: str = "", workers: int = 0,
                say=None) -> np.ndarray:
    """The (N, size, size, 3) uint8 array of these images, memory-mapped from the cache; decoded
    once (by one builder at a time, in `workers` processes: default every core this process may use),
    saying how far every ~10 s."""
    key = hashlib.sha1(json.dumps([str(root), names, size, VERSION]).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "clip_images" / f"{key}.npy"
    if not path.exists():
        with build_lock(path):
            if not path.exists():
                # the CPUs this process was given (Ray sets OMP_NUM_THREADS to a worker's CPUs), not the node's
                workers = workers or int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
                chunks = [(str(root), names[i:i + CHUNK], size) for i in range(0, len(names), CHUNK)]
                parts, started = [], time.perf_counter()

                def decoded(results) -> None:  # collect the chunks in order, saying how far
                    for part in results:
                        parts.append(part)
                        say_progress(say, "decoding images", min(len(parts) * CHUNK, len(names)),
                                     len(names), started)

                if workers > 1 and len(chunks) > 1:
                    # forkserver: no fork of a process that already runs threads (Ray's, torch's) or CUDA
                    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                        decoded(pool.map(_decode_chunk, chunks))  # in order, as each chunk is done
                else:
                    decoded(_decode_chunk(chunk) for chunk in chunks)
                with atomic_path(path) as tmp:
                    np.save(tmp, np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8))
    return np.load(path, mmap_mode="r")


class ArrayImages(torch.utils.data.Dataset):
    """Item i: image i, a (size, size, 3) uint8 view into the memory map (no copy); `collate`
    copies a whole batch out at once."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[i]


def collate(batch: list):
    """A batch of uint8 image views (or of (image, caption index) pairs) -> one (B, H, W, 3) uint8
    tensor (one copy, writable) [, (B,) int64]: the only per-batch CPU work of the input path."""
    if isinstance(batch[0], tuple):
        images, ids = zip(*batch)
        return torch.from_numpy(np.stack(images)), torch.as_tensor(ids)
    return torch.from_numpy(np.stack(batch))


class Normalise:
    """(B, H, W, 3) uint8 on any device -> (B, 3, H, W) float normalised, channels_last, on `device`."""

    def __init__(self, mean: tuple, std: tuple, device) -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # NHWC memory: channels_last
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
