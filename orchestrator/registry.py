"""The workloads the orchestrator knows: an explicit table, imported lazily by module path.

Lazy import keeps `--help` and `list` free of torch/timm import costs; nothing is scanned.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Workload:
    module: str  # importable module with `Config` and `train_loop(config, runtime)`
    metric: str  # the trial metric Tune ranks by
    mode: str  # "min" or "max"
    distributed: bool  # True: each trial is a Ray Train (TorchTrainer, DDP) run...
    single_process_when: str | None = None  # ...except where this config property is true (a plain Tune trial)
    row_exclude: tuple[str, ...] = ()  # config fields left out of table rows (the loop reports them per row)
    step_key: str | None = None  # a steps-table column unique per step (a retried epoch is kept once)
    preflight: str | None = None  # "module:function" run on each trial config before Ray starts (data checks)

    def runs_distributed(self, config) -> bool:
        """Is a trial of this config a Ray Train run (else a plain Tune function trial)?"""
        return self.distributed and not (self.single_process_when and getattr(config, self.single_process_when))

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def check(self, config) -> None:
        """Run the workload's preflight (e.g. is the data there?) on one config."""
        if self.preflight:
            module, _, function = self.preflight.partition(":")
            getattr(importlib.import_module(module), function)(config)


WORKLOADS: dict[str, Workload] = {
    "minimax": Workload(
        "workloads.minimax", metric="final_distance", mode="min", distributed=False,
        row_exclude=("algorithms", "lrs"),  # every row has its own `algorithm` and `lr`
    ),
    "gan": Workload(
        "workloads.gan.loop", metric="fid", mode="min", distributed=True, step_key="epoch",
        preflight="workloads.gan.loop:preflight",
    ),
    "clip": Workload(
        "workloads.clip.loop", metric="t2i_r10", mode="max", distributed=True, step_key="epoch",
        row_exclude=("prompts",), preflight="workloads.clip.loop:preflight",
        # frozen encoders: only the heads train, in seconds on cached features; a TorchTrainer would
        # add ~15 s of start-up per trial (and DDP nothing)
        single_process_when="frozen",
    ),
}
