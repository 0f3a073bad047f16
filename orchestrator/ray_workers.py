"""What runs inside Ray: the runtimes a workload's loop gets there, and the trial functions.

`_TuneRuntime` serves single-process Tune trials; `_TrainRuntime` serves Ray Train workers (DDP
preparation, `ray.train.report` with checkpoints). A distributed trial is `train_driver`: a Tune
function that builds and fits one `TorchTrainer` (the Train V2 pattern; `Tuner(trainer)` is
deprecated). Together with ray_backend.py, the only code that imports ray.tune / ray.train.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from orchestrator.spec import Scaling
from workloads.runtime import REPLAY_KEY, TABLE_KEY, load_state, save_state, table_of

REPORT_FILE = "report.json"  # a checkpoint's epoch row, next to its state file


class _TuneRuntime:
    """Runtime of a single-process trial: reports go straight to Tune."""

    world_size, rank, is_rank_zero, device = 1, 0, True, "cpu"

    def __init__(self, artifact_dir: str) -> None:
        self.artifact_dir = artifact_dir

    def report(self, metrics, final: bool = False, checkpoint=None, table: str | None = None) -> None:
        import ray
        from ray import tune

        node = ray.get_runtime_context().get_node_id()[:12]  # which node ran it (a column of every row)
        tune.report({**metrics, "node_id": node, TABLE_KEY: table_of(final, table)})

    def restore(self):
        return None

    def barrier(self) -> None:
        pass

    def prepare_model(self, model):
        return model

    def prepare_loader(self, loader):
        return loader


class _TrainRuntime:
    """Runtime of a Ray Train worker: DDP preparation, `ray.train.report` with checkpoints."""

    def __init__(self, artifact_dir: str) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_size, self.rank = context.get_world_size(), context.get_world_rank()
        self.is_rank_zero = self.rank == 0
        self.device = ray.train.torch.get_device()
        self.artifact_dir = artifact_dir

    def report(self, metrics, final: bool = False, checkpoint=None, table: str | None = None) -> None:
        import ray
        import ray.train

        payload = {**metrics, "node_id": ray.get_runtime_context().get_node_id()[:12], TABLE_KEY: table_of(final, table)}
        if checkpoint is None:
            ray.train.report(payload)
            return
        with tempfile.TemporaryDirectory() as tmp:  # Train copies it into the run's storage
            save_state(checkpoint, tmp)
            # the epoch's row travels with its checkpoint: see restore()
            (Path(tmp) / REPORT_FILE).write_text(json.dumps(payload, default=float))
            ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def restore(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
            replay = Path(directory) / REPORT_FILE
            payload = json.loads(replay.read_text()) if replay.exists() else None
        if payload is not None:
            # Train registers a checkpoint before the driver writes that epoch's row: a driver killed
            # in between would lose the row for good, since the resumed run starts after this epoch.
            # So every rank reports it again (a collective; rank 0's is kept); the driver writes it
            # only where that epoch's file is missing.
            ray.train.report({**payload, REPLAY_KEY: True})
        return state

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when world_size > 1, device placement

    def prepare_loader(self, loader):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader)  # DistributedSampler, device placement


def function_trial(params: dict, *, module: str, configs: list, artifact_dirs: list) -> None:
    import importlib

    index = params["trial"]
    importlib.import_module(module).train_loop(configs[index], _TuneRuntime(artifact_dirs[index]))


def train_worker(params: dict) -> None:
    import importlib

    importlib.import_module(params["module"]).train_loop(params["config"], _TrainRuntime(params["artifact_dir"]))


def train_driver(params: dict, *, module: str, configs: list, artifact_dirs: list, names: list,
                  scaling: Scaling, storage: str) -> None:
    """A Tune trial that builds and fits one TorchTrainer (the Train V2 pattern)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    index = params["trial"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"module": module, "config": configs[index], "artifact_dir": artifact_dirs[index]},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=names[index],
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],  # worker reports -> this Tune trial's results
        ),
    )
    trainer.fit()
