"""The seam between a training loop and whatever runs it.

A loop calls `runtime.report(metrics)` and, for torch workloads, `runtime.prepare_model` /
`runtime.prepare_loader`. Locally (tests, plain scripts) it gets `LocalRuntime`; under Ray the
orchestrator passes a runtime built on Ray Tune / Ray Train with the same methods. Loops never
import Ray.

Report protocol: `metrics` is a flat dict whose values are scalars or equal-length 1-D arrays (a
batch of rows, from vectorised loops). `final=False` reports become rows of the steps table;
`final=True` reports become rows of the trials table.
"""

from __future__ import annotations

from typing import Any, Mapping

FINAL_KEY = "_final"  # carried inside the metrics dict, so it survives Ray's report plumbing


class LocalRuntime:
    """Single process, no Ray: keeps every report in memory."""

    world_size = 1
    rank = 0
    is_rank_zero = True

    def __init__(self, device: str = "cpu", checkpoint_dir: str | None = None) -> None:
        self.device = device
        self.checkpoint_dir = checkpoint_dir  # where a resumable loop finds its last checkpoint
        self.steps: list[dict] = []
        self.finals: list[dict] = []

    def report(self, metrics: Mapping[str, Any], final: bool = False, checkpoint: str | None = None) -> None:
        (self.finals if final else self.steps).append(dict(metrics))

    def prepare_model(self, model):
        return model.to(self.device)

    def prepare_loader(self, loader):
        return loader

    def latest_checkpoint(self) -> str | None:
        return None
