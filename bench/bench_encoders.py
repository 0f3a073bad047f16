"""The offline encoders' feature-extraction speed (docs/science.md's encoder table), through the code a
run uses (loop.build, features.encode_images / encode_texts) on real Flickr8k images and captions:
fp32 on 2 threads (the table's "2 cores, fp32" column), and bf16 autocast on 1 thread where the CPU
has native bf16 (what a 1-CPU trial of `run all` does; fp32 elsewhere).

    python bench/bench_encoders.py [--data-dir DIR] [--images 192] [--captions 960]

Ends with one line: `encoders: lite0 X img/s, lite1 ..., minilm Y captions/s[, mpnet Z captions/s]`
(the 2-thread fp32 figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from common import ROOT

import torch

from orchestrator.studies import EXPERIMENTS
from workloads.clip import data, features, images, loop
from workloads.common import bf16_autocast, uses_bf16

IMAGE_MODELS = ("pkg:efficientnet-lite0", "pkg:efficientnet-lite1", "pkg:efficientnet-lite2")
TEXT_MODELS = ("pkg:all-minilm-l6-v2", "pkg:all-mpnet-base-v2")


def rate(count: int, work) -> float:
    work(min(count, 16))  # warm-up: first-call allocations, oneDNN's kernel choice
    started = time.perf_counter()
    work(count)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--captions", type=int, default=960)
    args = parser.parse_args()
    base = dataclasses.replace(EXPERIMENTS["clip"]["local"].config, data_dir=str(Path(args.data_dir).resolve()))
    train, _, _ = data.load_splits(base)
    with tempfile.TemporaryDirectory() as tmp:
        array = images.ArrayImages(images.image_array(train.root, train.images[:args.images], base.image_size,
                                                      cache_dir=tmp))
        texts = train.captions[:args.captions]
        bf16 = uses_bf16("cpu")
        figures = []
        for name in IMAGE_MODELS + TEXT_MODELS:
            if name == "pkg:all-mpnet-base-v2" and importlib.util.find_spec("all_mpnet_base_v2") is None:
                print(f"{name:<24} not installed (the `mpnet` extra)")
                continue
            is_image = name in IMAGE_MODELS
            config = dataclasses.replace(base, **({"image_model": name} if is_image else {"text_model": name}))
            model, tokenizer, mean, std = loop.build(config)
            model.eval()
            normalise = images.Normalise(mean, std, "cpu")
            speeds = []
            for threads, autocast in ((2, False), (1, bf16)):
                torch.set_num_threads(threads)
                context = bf16_autocast("cpu") if autocast else None

                def work(n: int) -> None:
                    kwargs = {"autocast": context} if context is not None else {}
                    with torch.no_grad():
                        if is_image:
                            features.encode_images(model, torch.utils.data.Subset(array, range(n)), normalise, **kwargs)
                        else:
                            features.encode_texts(model, lambda t: loop.tokenize(tokenizer, t, config.max_length, "cpu"),
                                                  texts[:n], **kwargs)

                speeds.append(rate(args.images if is_image else args.captions, work))
            unit = "img/s" if is_image else "captions/s"
            print(f"{name:<24} fp32, 2 threads: {speeds[0]:7.1f} {unit}   {'bf16' if bf16 else 'fp32'}, "
                  f"1 thread: {speeds[1]:7.1f} {unit}")
            figures.append(f"{name.split(':')[1].split('-')[-1] if is_image else name.split('-')[1]} "
                           f"{speeds[0]:.0f} {unit}")
    print("encoders: " + ", ".join(figures))


if __name__ == "__main__":
    main()
