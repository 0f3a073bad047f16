"""Retrieval metrics on a similarity matrix, with open_clip's definitions extended to 5 captions/image.

sim: (T, I) caption x image similarities; image_of: (T,) the image index of each caption.
text->image: a caption's target is its own image. image->text: an image hits at K if any of its own
captions ranks within K (its rank is the best rank among them).

Ties never favour the model. A query's rank is taken under a uniformly random order of the
candidates that tie with its target, and every metric is that rank's expectation: with g
candidates scored strictly higher and t others tied with the target, the target sits at
g + 1 ... g + t + 1 with equal chance, so P(rank <= K) = clip((K - g) / (t + 1), 0, 1) and the mean
rank is g + t/2 + 1. Collapsed embeddings (every score equal) thus score exactly chance, where
counting only strictly higher scores would give R@1 = 1.
"""

from __future__ import annotations

import numpy as np


def _hit_probability(greater: np.ndarray, tied_other: np.ndarray, tied_own: np.ndarray, k: int) -> np.ndarray:
    """P(the first of `tied_own` targets, in a random order of the tie block, is within rank k).

    The tie block holds tied_own targets and tied_other others after `greater` strictly better
    candidates; j = k - greater positions of the block are within k, and no target is among them
    with probability C(other, j) / C(other + own, j) = prod_{i<j} (other - i) / (other + own - i)."""
    j = np.clip(k - greater, 0, None)
    miss = np.ones(greater.shape, dtype=np.float64)
    for i in range(k):
        active = i < j
        factor = np.clip(tied_other - i, 0, None) / np.maximum(tied_other + tied_own - i, 1)
        miss = np.where(active, miss * factor, miss)
    return np.where(j > 0, 1.0 - miss, 0.0)


def _expected_rank(greater: np.ndarray, tied_other: np.ndarray, tied_own: np.ndarray) -> np.ndarray:
    """E[rank of the first target]: `greater` + its expected position in the tie block, (n + 1) / (m + 1)."""
    return greater + (tied_other + tied_own + 1) / (tied_own + 1)


def retrieval_metrics(sim: np.ndarray, image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    sim = np.asarray(sim, dtype=np.float64)
    sim = np.where(np.isnan(sim), -np.inf, sim)  # a diverged model's NaN scores rank last, never first
    image_of = np.asarray(image_of)
    n_text, n_image = sim.shape
    # text -> image: one target per caption
    target = sim[np.arange(n_text), image_of][:, None]  # (T, 1)
    t2i = ((sim > target).sum(axis=1), np.clip((sim == target).sum(axis=1) - 1, 0, None), np.ones(n_text))
    # image -> text: the targets are the image's own captions; the best of them decides
    cols = sim.T  # (I, T)
    own = np.zeros((n_image, n_text), dtype=bool)
    own[image_of, np.arange(n_text)] = True
    best = np.where(own, cols, -np.inf).max(axis=1, keepdims=True)  # (I, 1)
    i2t = ((~own & (cols > best)).sum(axis=1), (~own & (cols == best)).sum(axis=1), (own & (cols == best)).sum(axis=1))
    out = {}
    for name, (greater, tied_other, tied_own) in (("t2i", t2i), ("i2t", i2t)):
        for k in ks:
            out[f"{name}_r{k}"] = float(_hit_probability(greater, tied_other, tied_own, k).mean())
        ranks = _expected_rank(greater, tied_other, tied_own)
        out[f"{name}_median_rank"] = float(np.median(ranks))
        out[f"{name}_mean_rank"] = float(ranks.mean())
    return out


def chance_recall(n_image: int, k: int) -> float:
    """Text->image Recall@K of random scores: K / number of images."""
    return min(1.0, k / n_image)
