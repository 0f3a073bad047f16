"""The workloads the orchestrator knows: an explicit table, imported lazily by module path.

Lazy import keeps `--help` and `list` free of torch/timm import costs; nothing is scanned.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
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
    # (metric, mode) a trial reports during training (per `step_key`), for early stopping (--scheduler asha);
    # None: the study reports once per trial and cannot stop trials early
    early_stop: tuple[str, str] | None = None
    # what the workload reports, per table: {table: {column: int|float|str|bool|path}} (schemas.py gives every
    # part of a table these columns, null where absent; the orchestrator adds ids and config fields;
    # a "path" is a file the trial wrote under its artifact dir, stored relative to the results root)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    pbt: tuple[str, ...] = ()  # float config fields --scheduler pbt perturbs (empty: PBT not offered)
    # a bool column a run's one-line summary counts instead of showing its best `metric` (minimax: how many
    # (algorithm, lr) rows reached the saddle; its best final_distance, ~1e-300 for any of them, says nothing)
    headline_count: str | None = None
    gpu: bool = True  # its trials can use a GPU (use_gpu); minimax is NumPy: never
    # (column, mode) that chooses the best trial, on data the reported `metric` never saw (GAN: val_fid on
    # one half of the test images, fid reported on the other; CLIP: val rsum); None: the metric itself
    selection: tuple[str, str] | None = None
    # "module:function(config) -> seconds": a trial's compute on one core, roughly, for studies of many short
    # trials (minimax): where the nodes already up finish them before a new node could boot, they run there
    estimate: str | None = None

    @property
    def ranked_by(self) -> tuple[str, str]:
        """(column, mode) that ranks trials and their checkpoints: `selection`, else the metric itself."""
        return self.selection or (self.metric, self.mode)

    def best(self, trials):
        """The row of the best trial among `trials` (chosen by `selection`), or None."""
        column, mode = self.ranked_by
        if column not in trials or trials[column].notna().sum() == 0:
            return None
        return trials.loc[trials[column].idxmin() if mode == "min" else trials[column].idxmax()]

    def runs_distributed(self, config) -> bool:
        """Is a trial of this config a Ray Train run (else a plain Tune function trial)?"""
        return self.distributed and not (self.single_process_when and getattr(config, self.single_process_when))

    def estimated_seconds(self, config) -> float | None:
        """A trial's compute on one core, roughly (`estimate`); None: unknown."""
        if not self.estimate:
            return None
        module, _, function = self.estimate.partition(":")
        return float(getattr(importlib.import_module(module), function)(config))

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def check(self, config, say=None) -> None:
        """Run the workload's preflight (e.g. is the data there?) on one config; its progress lines go to
        `say(line, progress=None)`."""
        if self.preflight:
            module, _, function = self.preflight.partition(":")
            getattr(importlib.import_module(module), function)(config, say=say)


def _floats(*names: str) -> dict[str, str]:
    return {name: "float" for name in names}


_RETRIEVAL = [f"{d}_{m}" for d in ("t2i", "i2t") for m in ("r1", "r5", "r10", "median_rank", "mean_rank")]
_GAN_STEPS = {"epoch": "int", **_floats("loss_d", "loss_g", "d_x", "d_g_z", "images_per_s", "epoch_time_s",
                                        "wall_time_s", "lr", "val_fid", "fid", "class_coverage", "class_entropy", "gpu_memory_gb")}
_CLIP_STEPS = {"epoch": "int", **_floats("loss", "images_per_s", "epoch_time_s", "wall_time_s", "temperature", "gpu_memory_gb",
                                         *[f"val_{m}" for m in _RETRIEVAL], "val_rsum")}

WORKLOADS: dict[str, Workload] = {
    "minimax": Workload(
        "workloads.minimax", metric="final_distance", mode="min", distributed=False,
        row_exclude=("algorithms", "lrs"),  # every row has its own `algorithm` and `lr`
        headline_count="reached", gpu=False, estimate="workloads.minimax:estimated_seconds",
        columns={
            "trials": {"algorithm": "str", **_floats("lr", "final_x", "final_y", "final_distance", "initial_distance",
                                                     "rate"),
                       "converged": "bool", "reached": "bool", "diverged": "bool", "stopped_at": "int",
                       **_floats("spectral_radius", "saddle_x", "saddle_y")},
            "steps": {"algorithm": "str", "step": "int", **_floats("lr", "x", "y", "distance")},
        },
    ),
    "gan": Workload(
        "workloads.gan.loop", metric="fid", mode="min", distributed=True, step_key="epoch",
        preflight="workloads.gan.loop:preflight",
        # at the sample epochs (sample_epochs, and the last), against the test images' selection half
        early_stop=("val_fid", "min"), selection=("val_fid", "min"),
        pbt=("lr",),  # Ray's PBT DCGAN example perturbs the learning rates
        columns={
            "steps": _GAN_STEPS,
            "trials": {**_GAN_STEPS, "train_time_s": "float", "resumed_from_epoch": "int", "epochs_done": "int",
                       "generator_path": "path", "classifier_accuracy": "float", "classifier_digest": "str",
                       "world_size": "int", "generator_params": "int", "discriminator_params": "int", "bf16": "bool",
                       "val_fid_reference": "str", "fid_reference": "str"},
        },
    ),
    "clip": Workload(
        "workloads.clip.loop", metric="t2i_r10", mode="max", distributed=True, step_key="epoch",
        row_exclude=("prompts",), preflight="workloads.clip.loop:preflight",
        early_stop=("val_rsum", "max"),  # per epoch on the validation split (never the test split)
        selection=("val_rsum", "max"),
        columns={
            "steps": _CLIP_STEPS,
            "trials": {**_CLIP_STEPS, **_floats(*_RETRIEVAL), "image_params": "int", "text_params": "int",
                       "head_params": "int", "pair": "str", "train_time_s": "float", "world_size": "int",
                       "resumed_from_epoch": "int", "train_images": "int", "val_images": "int", "test_images": "int",
                       "selected_epoch": "int", "selected_on": "str", "embeddings_path": "path", "bf16": "bool"},
            "prompts": {"pair": "str", "prompt": "str", "rank": "int", "image": "str", "score": "float", "grid": "path"},
        },
        # frozen encoders: only the heads train, in seconds on cached features; a TorchTrainer would
        # add ~15 s of start-up per trial (and DDP nothing)
        single_process_when="frozen",
    ),
}
