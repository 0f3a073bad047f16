"""A domain-feature FID for FashionMNIST and a class-coverage score.

Inception weights are not available offline, so the feature extractor is a small CNN trained once
on the FashionMNIST training split and cached (with its test accuracy). FID here is the Frechet
distance between Gaussians fitted to its 128-d penultimate features:
    FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))
It ranks generators the way Inception-FID does but its values are not comparable to published FIDs.
"""

from __future__ import annotations


import time

import numpy as np
import torch
from torch import nn

from workloads.common import atomic_path, build_lock, cache_root
from workloads.gan import data

CLASSIFIER_FILE = "fmnist_classifier_v2.pt"  # bump when the architecture or training changes
FEATURES = 128


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
            nn.Flatten(), nn.Linear(32 * 7 * 7, FEATURES), nn.ReLU(),  # (B, 128): the FID features
        )
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 4, seed: int = 0, say=None) -> Classifier:
    """Deterministic for a given machine and thread count: the initial weights and the batch order
    come from `seed`, and the global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Classifier()
        generator = torch.Generator().manual_seed(seed)
        batch = 128
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * -(-len(x) // batch))
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            model.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(x), generator=generator).split(batch):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            if say:
                elapsed = time.perf_counter() - started
                say(f"FID classifier epoch {epoch}/{epochs}: mean loss {total / seen:.3f} ({elapsed:.0f} s, "
                    f"~{elapsed / epoch * (epochs - epoch):.0f} s left)", progress=("FID classifier epochs", epoch, epochs))
    return model.eval()


def load_classifier(data_dir: str = "", cache_dir: str = "", epochs: int = 4, say=None) -> tuple[Classifier, float]:
    """The cached classifier and its test accuracy; trains it once if absent (4 epochs, one-cycle
    Adam: 91.8% test accuracy in 38 s on 2 CPU cores, measured 2026-11-24). On a cluster the cache
    is on the shared storage: one builder (a file lock), every trial and run scores with the same
    classifier (its digest is in every GAN trial row)."""
    path = cache_root(cache_dir) / CLASSIFIER_FILE
    if not path.exists():
        with build_lock(path):
            if not path.exists():
                x, y = data.load(data_dir, cache_dir, train=True)
                if say:
                    say(f"training the FID classifier once for this cache ({epochs} epochs on {len(x)} images, "
                        "~1 min on 2 cores)")
                model = train_classifier(x, y, epochs, say=say)
                xt, yt = data.load(data_dir, cache_dir, train=False)
                with torch.no_grad():
                    accuracy = float(torch.cat([model(b).argmax(1) for b in xt.split(1000)]).eq(yt).float().mean())
                with atomic_path(path) as tmp:
                    torch.save({"model": model.state_dict(), "test_accuracy": accuracy}, tmp)
                if say:
                    say(f"FID classifier: test accuracy {accuracy:.1%}, cached in {path}")
    model = Classifier()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval(), float(state["test_accuracy"])


def classifier_digest(cache_dir: str = "") -> str:
    """sha256 (12 hex) of the cached classifier file: rows scored by the same classifier share it."""
    import hashlib

    return hashlib.sha256((cache_root(cache_dir) / CLASSIFIER_FILE).read_bytes()).hexdigest()[:12]


@torch.no_grad()
def features(model: Classifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, 128), predicted classes (N,)) for images in [-1, 1]."""
    feats, preds = [], []
    for batch in images.split(500):
        f = model.features(batch.float().cpu())
        feats.append(f)
        preds.append(model.head(f).argmax(1))
    return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets a (N, d) and b (M, d); the matrix root via symmetric eigendecompositions."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): a symmetric PSD matrix, so eigvalsh is exact
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def class_coverage(predictions: np.ndarray, classes: int = 10) -> tuple[float, float]:
    """(coverage, entropy): the share of classes that get at least half their fair share of samples,
    and the entropy of the predicted-class histogram divided by log(classes) (1 = uniform)."""
    counts = np.bincount(predictions, minlength=classes).astype(float)
    share = counts / counts.sum()
    coverage = float((share >= 0.5 / classes).mean())
    nonzero = share[share > 0]
    return coverage, max(0.0, float(-(nonzero * np.log(nonzero)).sum() / np.log(classes)))  # no -0.0


# FashionMNIST's 10000 test images, split in two: the first half is the reference of `val_fid`, which
# selects (ASHA, PBT, the best trial); the second half is the reference of `fid`, the reported number,
# which never selects anything. Each FID compares n generated images with n images of its half.
HALF = 5000


def references(n_images: int) -> dict[str, str]:
    """Which test images each FID's statistics come from (columns of the trial row)."""
    return {"val_fid_reference": f"FashionMNIST test[0:{n_images}]",
            "fid_reference": f"FashionMNIST test[{HALF}:{HALF + n_images}]"}


class Scorer:
    """Holds the classifier and the two reference sets' features; scores batches of generated images."""

    def __init__(self, data_dir: str, cache_dir: str, n_images: int) -> None:
        if not 0 < n_images <= HALF:
            raise ValueError(f"fid_images must be in 1..{HALF} (each half of the FashionMNIST test split), got {n_images}")
        self.model, self.accuracy = load_classifier(data_dir, cache_dir)
        self.digest = classifier_digest(cache_dir)
        test_images, _ = data.load(data_dir, cache_dir, train=False)
        self.selection, _ = features(self.model, test_images[:n_images])
        self.reference, _ = features(self.model, test_images[HALF:HALF + n_images])

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """val_fid (selection half), fid (held-out half) and class coverage of one batch of samples. FID
        is biased by the sample count: compare only FIDs of equal fid_images (rows record it)."""
        feats, preds = features(self.model, images)
        coverage, entropy = class_coverage(preds)
        return {"val_fid": frechet_distance(feats, self.selection), "fid": frechet_distance(feats, self.reference),
                "class_coverage": coverage, "class_entropy": entropy}
