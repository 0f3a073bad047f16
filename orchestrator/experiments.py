"""The studies and their profiles, as Python literals.

`local`: the embedded default, sized for a 2-core laptop with no GPU.
`paper`: the study's full settings, for a GPU cluster.
Config modules imported here must stay light (no torch at import): `list` and `--help` load them.
"""

from __future__ import annotations

import numpy as np

from orchestrator.spec import Experiment, Scaling
from workloads import minimax

PROFILES = ("local", "paper")

LRS_PER_TRIAL = 128  # learning rates one minimax trial runs vectorised; more lanes cost ~nothing


def minimax_sweep(config: minimax.Config) -> list[dict]:
    """One trial per (algorithm, chunk of the lr grid): chunks are vectorised inside a trial."""
    grid = config.lr_grid()
    chunks = np.array_split(grid, max(1, int(np.ceil(grid.size / LRS_PER_TRIAL))))
    return [
        {"algorithms": (algorithm,), "lrs": tuple(float(lr) for lr in chunk)}
        for algorithm in config.algorithms
        for chunk in chunks
    ]


EXPERIMENTS: dict[str, dict[str, Experiment]] = {
    "minimax": {
        "local": Experiment(
            study="minimax", profile="local",
            summary="5 algorithms x 240 lrs in [1e-3, 0.5] (half log, half linear), T=1000, from (1, 1)",
            config=minimax.Config(),
            sweep=minimax_sweep,
        ),
        "paper": Experiment(
            study="minimax", profile="paper",
            summary="5 algorithms x ~2000 lrs in [1e-4, 1], T=1000, from (1, 1)",
            config=minimax.Config(lr_min=1e-4, lr_max=1.0, num_lrs=2000),
            scaling=Scaling(),
            sweep=minimax_sweep,
        ),
    },
}


def studies() -> list[str]:
    return list(EXPERIMENTS)
