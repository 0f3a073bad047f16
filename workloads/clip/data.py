"""Flickr8k in its common layout: an image folder, a captions CSV (image, caption), a split file.

The split is the given split file, else 80/10/10 train/val/test by image with `split_seed` (never by
caption: all five captions of an image stay on one side; independent of the training seed). A missing or unreadable image fails with its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.common import DATA_ENV, data_root


class DataError(FileNotFoundError):
    """Data is missing or unreadable: the message names the file and how to provide it."""


@dataclass
class Split:
    images: list[str]  # image file names
    captions: list[str]  # every caption of these images
    image_of: np.ndarray  # (n_captions,) index into `images` of each caption
    root: Path  # the image folder

    def captions_of(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.images]
        for caption, image in enumerate(self.image_of):
            out[image].append(caption)
        return out


def dataset_root(data_dir: str, dataset: str) -> Path:
    root = data_root(data_dir)
    if root is None:
        raise DataError(f"no data folder: set --data-dir or {DATA_ENV} to the folder holding {dataset}/ "
                        "(Flickr8k: an image folder and a captions CSV)")
    return root / dataset


def load_splits(cfg) -> tuple[Split, Split | None, Split]:
    """(train, val, test) of the configured dataset, limited to cfg.train_images / val_images /
    test_images; val is None where the split file has none (flickr8k_subset)."""
    root = dataset_root(cfg.data_dir, cfg.dataset)
    captions_path, images_dir = root / cfg.captions_file, root / cfg.images_subdir
    for needed in (captions_path, images_dir):
        if not needed.exists():
            raise DataError(f"Flickr8k not found: {needed} is missing; point --data-dir or {DATA_ENV} at the folder "
                            f"holding {cfg.dataset}/{cfg.images_subdir}/ and {cfg.dataset}/{cfg.captions_file}")
    try:
        table = pd.read_csv(captions_path)[["image", "caption"]].dropna()
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{captions_path} is not a CSV with columns image, caption: {exc}") from None
    table["caption"] = table["caption"].str.strip()
    images = list(dict.fromkeys(table["image"]))  # first-seen order
    splits_path = root / cfg.splits_file if cfg.splits_file else None
    if splits_path is not None and splits_path.is_file():
        side = pd.read_csv(splits_path).set_index("image")["split"].to_dict()
    else:  # 80/10/10 by image (all five captions of an image on one side), the same for every seed
        order = np.random.default_rng(cfg.split_seed).permutation(len(images))
        train_end, val_end = int(round(0.8 * len(images))), int(round(0.9 * len(images)))
        side = {images[i]: ("train" if rank < train_end else "val" if rank < val_end else "test")
                for rank, i in enumerate(order)}
    out = {}
    for name, limit in (("train", cfg.train_images), ("val", cfg.val_images), ("test", cfg.test_images)):
        chosen = [im for im in images if side.get(im) == name]
        if limit:
            chosen = chosen[:limit]
        if not chosen:
            if name == "val":
                out[name] = None
                continue
            raise DataError(f"no {name} images in {root} (split file: {cfg.splits_file or 'none, 80/10/10 by image'})")
        index = {im: i for i, im in enumerate(chosen)}
        rows = table[table["image"].isin(index)]
        out[name] = Split(chosen, rows["caption"].tolist(), rows["image"].map(index).to_numpy(), images_dir)
    return out["train"], out["val"], out["test"]


def check_images(splits, show: int = 3) -> None:
    """Every image the chosen splits name is a file (a stat each: ~0.1 s for Flickr8k's 5000), so a
    missing JPEG fails before Ray starts, not minutes later on a GPU node."""
    missing = [split.root / name for split in splits if split is not None for name in split.images
               if not (split.root / name).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) named in the captions are missing, e.g. "
                        f"{', '.join(str(p) for p in missing[:show])}")


def image_transform(size: int, mean: tuple, std: tuple):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def load_image(path: Path, transform):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path.name} in {path.parent}: {exc}") from None


class Images:
    """A torch-style dataset over image files -> (3, size, size) tensors."""

    def __init__(self, root: Path, names: list[str], transform) -> None:
        self.root, self.names, self.transform = root, names, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        return load_image(self.root / self.names[i], self.transform)


class Pairs:
    """Training pairs: item i is image i with one of its captions, a different one each epoch."""

    def __init__(self, split: Split, images, seed: int) -> None:
        self.split, self.images, self.seed = split, images, seed  # images: tensors or an Images dataset
        self.captions_of = split.captions_of()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, i: int):
        options = self.captions_of[i]
        pick = options[np.random.default_rng((self.seed, self.epoch, i)).integers(len(options))]
        return self.images[i], pick  # pick: a caption index into split.captions
