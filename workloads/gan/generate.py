"""New samples from a trained generator: a state dict (or a checkpoint holding one) -> a PNG grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from workloads.common import save_grid
from workloads.gan.models import Generator
from workloads.runtime import load_state


def load_generator(path: str | Path) -> Generator:
    path = Path(path)
    state = load_state(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=True)
    if state is None:
        raise FileNotFoundError(f"no checkpoint state in {path}")
    if "generator" in state:  # a training checkpoint, not a bare state dict
        state = state["generator"]
    latent_dim = state["project.0.weight"].shape[1]  # Linear(latent -> 256*7*7) weight: (12544, latent)
    g = Generator(latent_dim)
    g.load_state_dict(state)
    return g.eval()


@torch.no_grad()
def write_samples(checkpoint: str | Path, out: str | Path, n: int = 64, seed: int = 0) -> Path:
    g = load_generator(checkpoint)
    z = torch.randn(n, g.project[0].in_features, generator=torch.Generator().manual_seed(seed))
    out = Path(out)
    save_grid(g(z), out, nrow=max(1, round(math.sqrt(n))))
    return out
