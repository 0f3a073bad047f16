"""What runs inside Ray: the runtimes a workload's loop gets there, and the trial functions.

`_TrainRuntime` serves Ray Train workers (DDP preparation, `ray.train.report` with checkpoints;
single-process Tune trials have tune_trial.py). A distributed trial is `train_driver`: a Tune
function that builds and fits one `TorchTrainer` (the Train V2 pattern; `Tuner(trainer)` is
deprecated). Imported only inside Ray actors and by the engine's driver-side modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from orchestrator import progress as progress_file
from orchestrator.results.provenance import package_version
from orchestrator.engine.capacity import worker_resources
from orchestrator.studies.spec import Scaling
from workloads.runtime import (NO_ROW, REPLAY_KEY, RESUMED_FROM_KEY, RESUMED_KEY, TABLE_KEY, load_state, save_state,
                               table_of)

REPORT_FILE = "report.json"  # a checkpoint's epoch row, next to its state file
NOTICED_FILE = "preemption_notice"  # in a checkpoint saved after a preemption notice (see _mark_noticed)
# a drain notice is looked for every this many steps: the query is a collective (~ms); a GAN step on a
# GPU takes ~5 ms, so ~0.1 s between looks, far inside AWS's two minutes
PREEMPTION_POLL_STEPS = 20


def software(device: str, device_name: str, device_count: int, **extra) -> dict:
    """Columns of every trial row: what ran it (code_version is added by the driver)."""
    return {"ray_version": package_version("ray"), "torch_version": package_version("torch"), "device": device,
            "device_name": device_name, "device_count": device_count, **extra}


def root_cause(exc: BaseException | None) -> str:
    """`Type: message` of the innermost cause of a trial failure, on one line: through Ray's task
    wrapper, Train's WorkerGroupError (per-rank user exceptions) and ControllerError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
        inner = (failures[min(failures)] if failures else None) or getattr(exc, "controller_failure", None) \
            or getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    if exc is None:
        return "trial failed"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def where() -> dict[str, str]:
    """Which node ran a report (columns of every row): its id, and its node type where the node was
    started for one (the autoscaler sets RAY_NODE_TYPE_NAME, which Ray turns into this label)."""
    import ray
    from ray._raylet import RAY_NODE_GROUP_KEY

    context = ray.get_runtime_context()
    group = context.get_node_labels().get(RAY_NODE_GROUP_KEY, "")
    return {"node_id": context.get_node_id(), "node_type": group[0] if isinstance(group, list) and group else group or ""}


def gpu_memory(device) -> dict[str, float]:
    """Peak GPU memory this process's tensors have held (GiB, a column of every row), where it runs on a GPU."""
    if not str(device).startswith("cuda"):  # no torch import for a NumPy trial (minimax): ~1 s per actor
        return {}
    import torch

    return {"gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}


def convert_sync_batchnorm(model, device, world_size: int, enabled: bool):
    """BatchNorm -> SyncBatchNorm where it means something and works: CUDA, more than one rank.
    (torch's SyncBatchNorm raises on CPU tensors, so CPU DDP keeps per-rank statistics.)"""
    import torch

    if enabled and world_size > 1 and torch.device(device).type == "cuda":
        # timm's, not torch's: torch's converter turns timm's BatchNormAct2d (norm + its fused
        # activation, all of EfficientNet's ReLU6) into a bare SyncBatchNorm, dropping the activation;
        # timm's keeps it (SyncBatchNormAct) and converts plain BatchNorm like torch's does
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    return model


class _TrainRuntime:
    """Runtime of a Ray Train worker: DDP preparation, `ray.train.report` with checkpoints.

    `cpu_fallback`: the driver found that the GPU nodes have no usable CUDA and the user allowed
    training on their CPUs: the device is the CPU (Ray would name cuda:0 from the GPU it assigned)
    and the process group is gloo (chosen by the driver)."""

    def __init__(self, artifact_dir: str, cpu_fallback: bool = False, sync_bn: bool = True,
                 score: tuple[str, str] | None = None) -> None:
        import ray.train
        import ray.train.torch
        import torch

        context = ray.train.get_context()
        self.world_size, self.rank = context.get_world_size(), context.get_world_rank()
        self.is_rank_zero = self.rank == 0
        self.cpu_fallback = cpu_fallback
        self.device = torch.device("cpu") if cpu_fallback else ray.train.torch.get_device()
        self.artifact_dir = artifact_dir
        kind = torch.device(self.device).type
        name = torch.cuda.get_device_name(self.device) if kind == "cuda" else (os.uname().machine + " cpu")
        self.sync_bn = sync_bn
        self.software = software(kind, name, self.world_size, cpu_fallback=cpu_fallback, sync_bn=False)
        self.polls, self.noticed = 0, False  # preemption_notice
        self.last_row: dict | None = None  # the latest checkpointed epoch row (see checkpoint_now)
        self.score = score  # (column, mode) that ranks this trial's checkpoints (retention: checkpoint_config)

    def report(self, metrics, final: bool = False, checkpoint=None, table: str | None = None) -> None:
        import ray
        import ray.train

        payload = {**metrics, **(self.software if final else {}), **where(), **gpu_memory(self.device),
                   TABLE_KEY: table_of(final, table)}
        if checkpoint is None:
            ray.train.report(payload)
            return
        self.last_row = payload
        with tempfile.TemporaryDirectory() as tmp:  # Train copies it into the run's storage
            save_state(checkpoint, tmp)
            # the epoch's row travels with its checkpoint: see restore()
            (Path(tmp) / REPORT_FILE).write_text(json.dumps(payload, default=float))
            self._mark_noticed(tmp)
            ray.train.report({**payload, SCORE_KEY: checkpoint_score(metrics, self.score)},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def preemption_notice(self) -> bool:
        """True once per run attempt, when Ray says a node of this worker group is being drained for
        preemption (a spot notice: clusters/spot_notice.py runs `ray drain-node`). The query is a
        collective across the group's workers (rank 0's answer broadcast), so it is asked every
        PREEMPTION_POLL_STEPS calls, which every rank makes in step: they all agree when it fires."""
        import ray.train

        self.polls += 1
        if self.noticed or self.polls % PREEMPTION_POLL_STEPS:
            return False
        self.noticed = ray.train.get_preemption_info() is not None
        return self.noticed

    def _mark_noticed(self, directory: str) -> None:
        """Checkpoints saved after a notice say so: a resume from one (the notice's own, or an epoch's
        that ended before the node went) was a preemption's, not a failure's."""
        if self.noticed:
            (Path(directory) / NOTICED_FILE).touch()

    def checkpoint_now(self, checkpoint) -> None:
        """A checkpoint without a row (every rank calls: a report is a collective). It carries the
        latest epoch row as its replay (restore()), as that epoch's checkpoint did."""
        import ray.train

        payload = {TABLE_KEY: NO_ROW}
        if checkpoint is None:
            ray.train.report(payload)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_state(checkpoint, tmp)
            if self.last_row is not None:
                (Path(tmp) / REPORT_FILE).write_text(json.dumps(self.last_row, default=float))
            self._mark_noticed(tmp)
            # no epoch measured here: kept as the latest until the next checkpoint
            ray.train.report({**payload, SCORE_KEY: checkpoint_score({}, self.score)},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def say(self, line: str, progress: tuple | None = None) -> None:
        """A progress line the driver prints, with the step's count if it has one (progress.py); rank 0's only."""
        if self.is_rank_zero:
            progress_file.append(self.artifact_dir, line, progress)

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
            noticed = (Path(directory) / NOTICED_FILE).exists()
        # a second notice before the next epoch ends saves a checkpoint that must carry this row too
        self.last_row = {k: v for k, v in payload.items() if k not in (REPLAY_KEY, RESUMED_KEY, RESUMED_FROM_KEY)} \
            if payload else None
        # the driver counts resumes, and those from a preemption's checkpoint (mid-epoch: `position`)
        resumed = {RESUMED_KEY: "preemption" if noticed else "failure", RESUMED_FROM_KEY: Path(checkpoint.path).name}
        if payload is not None:
            # Train registers a checkpoint before the driver writes that epoch's row: a driver killed
            # in between would lose the row for good, since the resumed run starts after this epoch.
            # So every rank reports it again (a collective; rank 0's is kept); the driver writes it
            # only where that epoch's file is missing.
            ray.train.report({**payload, REPLAY_KEY: True, **resumed})
        else:
            ray.train.report({TABLE_KEY: NO_ROW, **resumed})
        return state

    def prepare_model(self, model):
        import ray.train.torch
        import torch

        converted = convert_sync_batchnorm(model, self.device, self.world_size, self.sync_bn)
        if converted is not model or any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()):
            self.software["sync_bn"] = True  # rows say whether batch statistics spanned all ranks
        model = converted
        if self.cpu_fallback:  # CPU DDP (no device_ids) instead of a move to the cuda device Ray assigned
            return ray.train.torch.prepare_model(model, move_to_device=self.device)
        return ray.train.torch.prepare_model(model)  # DDP when world_size > 1, device placement

    def prepare_loader(self, loader):
        import ray.train.torch

        # device placement only: the loops shard with their own sampler (runtime.EpochSampler, seeded
        # per trial; Ray's DistributedSampler would shuffle every trial with seed 0)
        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, move_to_device=not self.cpu_fallback)


SCORE_KEY = "checkpoint_score"  # ranks a trial's Train checkpoints (higher: better); in no table


UNMEASURED = -1e300  # the score of a checkpoint whose epoch did not measure the metric: below any measured one


def checkpoint_score(metrics: dict, score: tuple[str, str] | None) -> float:
    """The selection metric as a score to maximise (min metrics negated); UNMEASURED where an epoch did
    not measure it (GAN: between sample epochs), so such a checkpoint is kept as a best one only while
    fewer than keep_best epochs were measured. Finite: Train saves its checkpoint manager's state with
    pydantic, which writes -inf as null, and a resumed run's manager then fails comparing None."""
    value = metrics.get(score[0]) if score else None
    if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return UNMEASURED
    return float(value) if score[1] == "max" else -float(value)


def checkpoint_config(keep_best: int):
    """Train's retention: the best `keep_best` checkpoints by SCORE_KEY, and the latest, which Train
    always keeps (what a resume starts from); older ones deleted as training goes. -1: every one."""
    import ray.train

    if keep_best < 0:
        return ray.train.CheckpointConfig()
    if keep_best == 0:  # the latest only
        return ray.train.CheckpointConfig(num_to_keep=1)
    return ray.train.CheckpointConfig(num_to_keep=keep_best, checkpoint_score_attribute=SCORE_KEY,
                                      checkpoint_score_order="max")


IDENTITY = ("index", "name", "dir")  # what a Tune trial config holds besides PBT's fields (plan.param_space)


def trial_config(params: dict, configs: list) -> tuple[int, Any]:
    """(index, config) of a Tune trial: its config with the values Tune holds for it applied (PBT's
    perturbed fields; none otherwise); lists back to the tuples the config declares."""
    values = {k: v for k, v in params["trial"].items() if k not in IDENTITY}
    index = params["trial"]["index"]
    base = configs[index]
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    changes = {k: v for k, v in changes.items() if getattr(base, k) != v}
    return index, dataclasses.replace(base, **changes) if changes else base


def train_worker(params: dict) -> None:
    import importlib

    runtime = _TrainRuntime(params["artifact_dir"], params.get("cpu_fallback", False), params.get("sync_bn", True),
                            params.get("score"))
    importlib.import_module(params["module"]).train_loop(params["config"], runtime)


def _cuda_probe() -> dict:
    """Runs on a node that declares a GPU: can torch use it there?"""
    import ray
    import torch

    ok, why = torch.cuda.is_available(), ""
    if not ok:
        try:
            torch.cuda.init()
        except Exception as exc:  # the driver's or the build's own words
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "cuda": ok,
            "why": why or f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device",
            "gpu_ids": ray.get_gpu_ids()}


PROBE_GRACE_S = 60.0  # the probe waits this much past max_wait_s: the run's watcher gives up first, with its reason


def check_gpu_nodes(allow_cpu_fallback: bool, timeout_s: float, cpus_per_worker: float, gpus_per_worker: float = 1.0) -> bool:
    """Before the TorchTrainer picks NCCL (it does so from use_gpu, before any user code runs): probe
    a node of the shape one worker needs (so the autoscaler starts, if anything, a node the workers
    will use). True: train on CPU with gloo (allowed fallback). Raises with one line otherwise.
    The probe holds a placement group of its own while it waits, so the run's watcher sees this trial
    waiting for a GPU node and says what the autoscaler says of it. It sees one node: cluster.yaml's
    GPU types also check CUDA in their setup, on every node."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"GPU": gpus_per_worker, "CPU": cpus_per_worker}])
    try:
        try:
            ray.get(group.ready(), timeout=(timeout_s + PROBE_GRACE_S) if timeout_s else None)
        except ray.exceptions.GetTimeoutError:
            from orchestrator.engine import waiting

            raise RuntimeError(f"no GPU node came within {timeout_s + PROBE_GRACE_S:g} s to check that torch can use "
                               f"its GPU: {waiting.describe_wait(waiting.autoscaler_report(), None, 1)}") from None
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        found = ray.get(ray.remote(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)(_cuda_probe)
                        .options(scheduling_strategy=strategy).remote())
    finally:
        remove_placement_group(group)
    if found["cuda"]:
        return False
    if not allow_cpu_fallback:
        raise RuntimeError(f"node {found['node']} ({found['host']}) declares a GPU but torch cannot use it: {found['why']}; "
                           "fix the node's driver or torch build (or set ORCHESTRATOR_ALLOW_CPU_FALLBACK=1 to train "
                           "on its CPU, as the simulated cluster does)")
    return True


def _trainer_class():
    """TorchTrainer without Train's detached PlacementGroupCleaner: it asks the State API (the dashboard)
    whether its controller lives, so without a dashboard it never frees the group of a trial Tune
    stopped, and never exits. The run's driver frees such groups itself (reclaim.py)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def train_driver(params: dict, *, module: str, configs: list, artifact_dirs: list, names: list,
                  scaling: Scaling, storage: str, allow_cpu_fallback: bool = False, placement: str = "PACK",
                  score: tuple[str, str] | None = None) -> None:
    """A Tune trial that builds and fits one TorchTrainer (the Train V2 pattern)."""
    # Read where the TorchTrainer is built (this process): the dashboard's Train view, and a worker
    # group that waits for nodes as long as max_wait_s instead of giving up and retrying every 60 s
    # while an autoscaled GPU node boots (Train passes this one on to its controller)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    if scaling.max_wait_s:
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(max(60.0, scaling.max_wait_s + 60)))
    import ray.train
    from ray.train.torch import TorchConfig

    from orchestrator.engine import relay

    index, config = trial_config(params, configs)
    queue = relay.trial_queue()
    cpu_fallback = (check_gpu_nodes(allow_cpu_fallback, scaling.max_wait_s, scaling.cpus_per_worker, scaling.gpus_per_worker)
                    if scaling.use_gpu else False)
    trainer = _trainer_class()(
        train_worker,
        torch_config=TorchConfig(backend="gloo") if cpu_fallback else None,  # None: nccl with GPUs, else gloo
        train_loop_config={"module": module, "config": config, "artifact_dir": artifact_dirs[index], "score": score,
                           "cpu_fallback": cpu_fallback, "sync_bn": scaling.sync_bn},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker=worker_resources(scaling),
            placement_strategy=placement,  # capacity.placement_strategy: one node where a node type holds them all
        ),
        run_config=ray.train.RunConfig(
            name=names[index],
            storage_path=storage,
            # a preemption (a worker's node drained with reason PREEMPTION: clusters/spot_notice.py) is
            # not a failure: its own budget, unlimited by default; max_failures stays for real errors
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures,
                                                   max_preemption_failures=scaling.max_preemptions),
            checkpoint_config=checkpoint_config(scaling.keep_best),
            callbacks=[relay.ToTrial(queue)],  # worker reports -> this Tune trial's results (relay.py)
        ),
    )
    try:
        relay.fit_reporting(trainer, queue)
    except Exception as exc:  # the cause on one line (the row's `error`), not Train's summary
        raise RuntimeError(root_cause(exc)) from None
