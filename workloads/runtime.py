"""The seam between a training loop and whatever runs it.

A loop calls `runtime.report(metrics, checkpoint=state)`, `runtime.restore()` and, for torch
workloads, `runtime.prepare_model` / `runtime.prepare_loader`. Locally (tests, plain scripts) it
gets `LocalRuntime`; under Ray the orchestrator passes a runtime built on Ray Tune / Ray Train with
the same methods. Loops never import Ray.

Report protocol: `metrics` is a flat dict whose values are scalars or equal-length 1-D arrays (a
batch of rows, from vectorised loops). Plain reports become rows of the steps table, `final=True`
reports rows of the trials table, `table="name"` rows of another table of the study. Every rank
calls `report` (under DDP it is a collective); only rank 0's metrics and checkpoint are kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from workloads.common import atomic_path

TABLE_KEY = "_table"  # carried inside the metrics dict, so it survives Ray's report plumbing
REPLAY_KEY = "_replayed"  # marks a checkpointed epoch's row reported again after a restore
STATE_FILE = "state.pt"  # a checkpoint is a directory holding this torch file
RESUMED_KEY = "_resumed"  # a Train run's first report after a restore: "preemption" or "failure"...
RESUMED_FROM_KEY = "_resumed_from"  # ...and the checkpoint's name (a preemption counts once per noticed checkpoint)
NO_ROW = "_no_row"  # TABLE_KEY of a report that only carries a checkpoint (a preemption's, mid-epoch)


def save_state(state: Mapping[str, Any], directory: str | os.PathLike) -> None:
    import torch

    with atomic_path(Path(directory) / STATE_FILE) as tmp:
        torch.save(dict(state), tmp)


def load_state(directory: str | os.PathLike) -> dict | None:
    import torch

    path = Path(directory) / STATE_FILE
    # weights_only: a checkpoint is data (tensors, numbers, dicts), never code to unpickle
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def table_of(final: bool, table: str | None) -> str:
    return table or ("trials" if final else "steps")


def unwrap(model):
    """The module inside a DDP wrapper (state dicts without the `module.` prefix)."""
    return getattr(model, "module", model)


def reduce_mean(tensor):
    """Mean over ranks when torch.distributed is running, else the tensor itself."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / dist.get_world_size()
    return tensor


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random streams: distinct per rank, the same on every run
    (numpy's SeedSequence mixes the pair; seed + rank would make rank 1 of seed 42 rank 0 of 43)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class RankRNG:
    """A DDP rank's own random streams: the global torch RNG (dropout masks) and a generator on the
    device for the loop's noise. Models are built before this, from the shared seed, so their
    initial weights are identical on every rank; everything random after that differs per rank."""

    def __init__(self, seed: int, rank: int, device) -> None:
        import torch

        self.device = torch.device(device)
        torch.manual_seed(rank_seed(seed, rank))  # CPU and every CUDA device's default generator
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(rank_seed(seed, rank) ^ 0x5EED)

    def state(self) -> dict:
        import torch

        out = {"device": self.device.type, "cpu": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def load(self, state: dict) -> None:
        import torch

        torch.set_rng_state(state["cpu"])
        if state.get("device", "cpu") != self.device.type:
            return  # resumed on another kind of device (a CUDA generator's state is no CPU one's): fresh noise seeds
        self.noise.set_state(state["noise"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (a collective under DDP), else [obj]."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class EpochSampler:
    """This rank's share of a shuffle that is a function of (seed, epoch) alone.

    Global batch k is perm[k*B:(k+1)*B] (B = per_rank * world_size), perm a permutation drawn from
    (seed, epoch); rank r takes its r-th slice of each. So seeds vary the order under DDP (Ray's
    DistributedSampler would use seed 0 for every trial), a 1-worker and an N-worker trial of one seed
    see the same global batches, and a trial resumed mid-epoch (`set_epoch(epoch, start)`) continues
    the order it had, from batch `start`. drop_last: an incomplete last global batch is dropped;
    else it is filled from the permutation's start, so every rank has as many batches (DDP needs it)."""

    def __init__(self, n: int, per_rank: int, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        self.n, self.per_rank, self.seed, self.rank, self.world_size = n, per_rank, seed, rank, world_size
        size = per_rank * world_size
        self.batches = max(1, n // size) if drop_last else -(-n // size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.batches - self.start) * self.per_rank

    def __iter__(self):
        import numpy as np
        import torch

        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        perm = torch.randperm(self.n, generator=generator)
        size = self.per_rank * self.world_size
        perm = perm.repeat(-(-self.batches * size // self.n))[: self.batches * size]  # (batches * size,)
        mine = perm.view(self.batches, self.world_size, self.per_rank)[self.start:, self.rank]  # (left, per_rank)
        return iter(mine.reshape(-1).tolist())


def maybe_fail(fail_at_epoch: int, epoch: int, runtime) -> None:
    """Test hook: rank 0 raises once, in the middle of epoch `fail_at_epoch` (a marker file in the
    artifact dir makes it once), as a crashed worker would; the run must resume from the last checkpoint."""
    if epoch != fail_at_epoch or not runtime.is_rank_zero:
        return
    marker = Path(runtime.artifact_dir) / ".injected_failure"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise RuntimeError(f"injected failure in epoch {epoch} (fail_at_epoch)")


class SingleProcess:
    """The runtime's seams for one process: rank 0 of 1, nothing to wrap or wait for."""

    world_size = 1
    rank = 0
    is_rank_zero = True
    device = "cpu"

    def barrier(self) -> None:
        pass

    def prepare_model(self, model):
        return model.to(self.device)

    def prepare_loader(self, loader):
        return loader

    def preemption_notice(self) -> bool:
        """True once when this trial's node is about to be reclaimed (a Ray Train run's drain notice)."""
        return False

    def checkpoint_now(self, checkpoint) -> None:
        """Save `checkpoint` (rank 0's; None elsewhere) without a row: a preemption's, mid-epoch."""


class LocalRuntime(SingleProcess):
    """Single process, no Ray: keeps every report in memory; checkpoints go to `checkpoint_dir`."""

    def __init__(self, device: str = "cpu", artifact_dir: str | None = None, checkpoint_dir: str | None = None,
                 notice_at: int = 0) -> None:
        self.device = device
        self.artifact_dir = artifact_dir or tempfile.mkdtemp(prefix="orchestrator-")
        self.checkpoint_dir = checkpoint_dir
        self.notice_at, self.polls = notice_at, 0  # tests: a preemption notice at the notice_at-th poll
        self.tables: dict[str, list[dict]] = {"steps": [], "trials": []}

    @property
    def steps(self) -> list[dict]:
        return self.tables["steps"]

    @property
    def finals(self) -> list[dict]:
        return self.tables["trials"]

    def report(self, metrics: Mapping[str, Any], final: bool = False, checkpoint: Mapping | None = None,
               table: str | None = None) -> None:
        self.tables.setdefault(table_of(final, table), []).append(dict(metrics))
        if checkpoint is not None and self.checkpoint_dir:
            Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            save_state(checkpoint, self.checkpoint_dir)

    def restore(self) -> dict | None:
        return load_state(self.checkpoint_dir) if self.checkpoint_dir else None

    def preemption_notice(self) -> bool:
        self.polls += 1
        return self.polls == self.notice_at

    def checkpoint_now(self, checkpoint) -> None:
        if checkpoint is not None and self.checkpoint_dir:
            Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            save_state(checkpoint, self.checkpoint_dir)
