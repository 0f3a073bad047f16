"""The CLIP input path's capacity on this machine, in images/s per CPU core: the old path (decode a
JPEG, resize, crop, to float, normalise, every epoch) against the new one (slices of the decoded
uint8 array, normalised), same output tensors, one thread each.

    python bench/bench_input.py [--data-dir DIR] [--images 256]

Like for like in the last line, `input: new X img/s/core, old Y img/s/core, ratio Z`: the same
224-px files of the shared subset (read from the page cache on both sides: the JPEGs after a first
pass, the array memory-mapped), the same normalised float tensors out (checked), normalisation on
the CPU on both sides (on a GPU the new path normalises there). Real Flickr8k images are about
500x375 and decode more slowly; the shared data has none, so the old path is also timed on 500x375
copies upscaled from the 224-px files (JPEG quality 90): their decoding cost, not real photographs'.
The one-off cost of building the array (the old path's work, once, in parallel) is printed too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import ROOT

import torch

from workloads.clip import data, images


def old_path(root: Path, names: list[str], size: int, mean, std) -> tuple[float, torch.Tensor]:
    transform = data.image_transform(size, mean, std)
    started = time.perf_counter()
    out = torch.stack([data.load_image(root / name, transform) for name in names])
    return len(names) / (time.perf_counter() - started), out


def new_path(array, batch: int = 128, rounds: int = 20) -> tuple[float, torch.Tensor]:
    """What the CPU does per batch on the new path: shuffled uint8 views out of the memory map,
    one copy into a batch (normalising happens on the GPU, timed apart below)."""
    loader = torch.utils.data.DataLoader(images.ArrayImages(array), batch_size=batch, shuffle=True,
                                         collate_fn=images.collate)
    started = time.perf_counter()
    for _ in range(rounds):
        for x in loader:
            pass
    return rounds * len(array) / (time.perf_counter() - started), x


def normalise_rate(array, mean, std, rounds: int = 5) -> tuple[float, torch.Tensor]:
    """The normalisation (GPU work on a GPU), here on one CPU core: an upper bound of its cost."""
    loader = torch.utils.data.DataLoader(images.ArrayImages(array), batch_size=128, collate_fn=images.collate)
    normalise = images.Normalise(mean, std, "cpu")
    started = time.perf_counter()
    for _ in range(rounds):
        out = torch.cat([normalise(x) for x in loader])
    return rounds * len(array) / (time.perf_counter() - started), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core
    root = Path(args.data_dir).resolve() / "flickr8k_subset" / "images"
    names = sorted(p.name for p in root.glob("*.jpg"))[:args.images]
    size, mean, std = 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        big.mkdir()
        for name in names:  # real Flickr8k size, for the old path's decoding cost
            with Image.open(root / name) as im:
                im.convert("RGB").resize((500, 375), Image.BICUBIC).save(big / name, quality=90)
        old_path(root, names, size, mean, std)  # a first pass: the JPEGs in the page cache, as the array will be
        old_224, old_tensors = old_path(root, names, size, mean, std)
        old_500, _ = old_path(big, names, size, mean, std)
        started = time.perf_counter()
        array = images.image_array(root, names, size, cache_dir=f"{tmp}/cache", workers=1)
        build = len(names) / (time.perf_counter() - started)
        new, _ = new_path(array)
        on_cpu, new_tensors = normalise_rate(array, mean, std)
    same = torch.allclose(old_tensors, new_tensors, atol=1e-6)
    print(f"old path, 224 px JPEGs (the shared subset) : {old_224:8.0f} img/s/core")
    print(f"old path, 500x375 copies (upscaled 224 px) : {old_500:8.0f} img/s/core (the real size's decoding)")
    print(f"building the uint8 array once (224 px)     : {build:8.0f} img/s/core")
    print(f"new path, uint8 batches out of the array   : {new:8.0f} img/s/core (the CPU's whole share)")
    print(f"  + normalising on the CPU (a GPU's job)   : {on_cpu:8.0f} img/s/core")
    print(f"same tensors as the old path (atol 1e-6)   : {same}")
    print(f"input: new {on_cpu:.0f} img/s/core, old {old_224:.0f} img/s/core, ratio {on_cpu / old_224:.1f}")


if __name__ == "__main__":
    main()
