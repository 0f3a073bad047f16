"""Retrieval metrics on a similarity matrix, with open_clip's definitions extended to 5 captions/image.

sim: (T, I) caption x image similarities; image_of: (T,) the image index of each caption.
text->image: a caption's target is its own image; rank = 1 + number of images scored higher.
image->text: an image's rank is the best rank among its own captions (it hits at K if any does).
"""

from __future__ import annotations

import numpy as np


def retrieval_metrics(sim: np.ndarray, image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    sim = np.asarray(sim, dtype=np.float64)
    image_of = np.asarray(image_of)
    n_text, n_image = sim.shape
    target = sim[np.arange(n_text), image_of]  # (T,)
    t2i_rank = 1 + (sim > target[:, None]).sum(axis=1)  # (T,)
    # image -> text: rank of every caption among all captions for that image's column
    target_cols = sim.T  # (I, T)
    own = np.zeros((n_image, n_text), dtype=bool)
    own[image_of, np.arange(n_text)] = True
    best_own = np.where(own, target_cols, -np.inf).max(axis=1)  # (I,) score of the best own caption
    i2t_rank = 1 + (target_cols > best_own[:, None]).sum(axis=1)  # (I,)
    out = {}
    for name, ranks in (("t2i", t2i_rank), ("i2t", i2t_rank)):
        for k in ks:
            out[f"{name}_r{k}"] = float((ranks <= k).mean())
        out[f"{name}_median_rank"] = float(np.median(ranks))
        out[f"{name}_mean_rank"] = float(ranks.mean())
    return out


def chance_recall(n_image: int, k: int) -> float:
    """Text->image Recall@K of random scores: K / number of images."""
    return min(1.0, k / n_image)
