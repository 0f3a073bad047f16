"""Frozen encoders: features cached per encoder, not per pair.

An image encoder's features of a split depend on the image model, its weights and the input
(size, normalisation, the split's images), never on the text side; a text encoder's on the text
model, its tokenizer, pooling and the captions. So each is one file in the cache, computed once (one
builder at a time, across processes and nodes) and reused by every pair, seed and trial that shares
the encoder: three image models and two text models cost five extractions per split, whatever
the number of pairs. Random-init encoders (pretrained=false, or a sized-down text model) depend on
the seed, which is then part of the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from workloads.clip import images as images_mod
from workloads.clip.config import Config
from workloads.common import atomic_path, build_lock, cache_root, say_progress

VERSION = 4  # bump when extraction changes


def _path(kind: str, ident: dict) -> Path:
    digest = hashlib.sha1(json.dumps({**ident, "version": VERSION}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root(ident.get("cache_dir", "")) / "clip_features" / kind / f"{digest}.pt"


def image_key(config: Config, split, bf16: bool) -> dict:
    random_init = not config.pretrained
    return {"image_model": config.image_model, "image_weights": config.image_weights, "pretrained": config.pretrained,
            "image_size": config.image_size, "image_mean": config.image_mean, "image_std": config.image_std,
            "root": str(split.root), "images": split.images, "seed": config.seed if random_init else None,
            "bf16": bf16, "cache_dir": config.cache_dir}


def text_key(config: Config, split, bf16: bool) -> dict:
    random_init = not config.pretrained or bool(config.text_layers or config.text_width)
    return {"text_model": config.text_model, "tokenizer": config.tokenizer, "pretrained": config.pretrained,
            "text_pooling": config.text_pooling, "text_layers": config.text_layers, "text_width": config.text_width,
            "max_length": config.max_length, "captions": hashlib.sha1("\n".join(split.captions).encode()).hexdigest(),
            "seed": config.seed if random_init else None, "bf16": bf16, "cache_dir": config.cache_dir}


@torch.no_grad()
def encode_images(model, images, normalise, batch: int = 64, say=None, autocast=contextlib.nullcontext()) -> torch.Tensor:
    """Pooled features (N, D) of uint8 images (see images.py), normalised on the model's device;
    the forwards under `autocast` (bf16 where native: common.bf16_autocast), the features fp32."""
    # its own generator: a DataLoader without one draws its seed from the global RNG (dropout's), so
    # validating between epochs would move the next epoch's dropout masks
    loader = DataLoader(images, batch_size=batch, collate_fn=images_mod.collate, generator=torch.Generator())
    out, started = [], time.perf_counter()
    for i, x in enumerate(loader):
        with autocast:
            f = model.image_features(normalise(x))
        out.append(f.float().cpu())
        say_progress(say, "images", (i + 1) * batch, len(images), started)
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenize, texts: list[str], batch: int = 256, say=None,
                 autocast=contextlib.nullcontext()) -> torch.Tensor:
    """Pooled features (N, D) of captions; `tokenize(texts)` -> the model's inputs on its device.
    Batches of similar length (sorted by characters, then put back in order): a batch is padded to
    its longest caption, and random batches of Flickr8k captions padded ~2x more tokens than needed."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out, started = [], time.perf_counter()
    for i in range(0, len(texts), batch):
        with autocast:
            f = model.text_features(**tokenize([texts[j] for j in order[i:i + batch]]))
        out.append(f.float().cpu())
        say_progress(say, "captions", i + batch, len(texts), started)
    features = torch.cat(out) if out else torch.zeros(0)
    restored = torch.empty_like(features)
    restored[torch.as_tensor(order, dtype=torch.long)] = features
    return restored


def cached(kind: str, ident: dict, compute, say=None) -> torch.Tensor:
    """The cached features at `ident`, computing them once (under the file's build lock)."""
    path = _path(kind, ident)
    if not path.exists():
        started = time.perf_counter()
        with build_lock(path):  # another trial (any node) may be extracting this encoder: wait for its file
            if not path.exists():
                started = time.perf_counter()
                features = compute()
                with atomic_path(path) as tmp:
                    torch.save(features, tmp)
                if say:
                    say(f"{kind} features cached: {tuple(features.shape)} in {time.perf_counter() - started:.0f} s")
            elif say:
                say(f"{kind} features: another trial extracted them ({time.perf_counter() - started:.0f} s waited)")
    return torch.load(path, map_location="cpu", weights_only=True)
