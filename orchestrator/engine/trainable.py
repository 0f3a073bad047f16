"""What Tune runs for a plan's trials, and what each asks of the cluster (driver side).

A distributed workload's trial is a Train driver (actors.train_driver): it holds no CPU, only the
`train_driver` resource, and waits on its TorchTrainer's workers; as many run at once as the
cluster can hold worker groups. A single-process trial (minimax, frozen-encoder CLIP, any PBT
trial) is a Tune function trial that asks for one worker's resources itself.
"""

from __future__ import annotations

import os
from typing import Callable

from orchestrator.engine import actors, capacity, tune_trial
from orchestrator.engine.plan import TrialPlan, train_run_names
from orchestrator.engine.session import DRIVER_RESOURCE

CPU_FALLBACK_ENV = "ORCHESTRATOR_ALLOW_CPU_FALLBACK"  # "1": GPU nodes without CUDA train on CPU (gloo), rows say so


def build(plan: TrialPlan, joined: bool, say: Callable[[str], None]) -> tuple[object, int | None]:
    """(Tune's trainable with its resources, how many trials to run at once; None: no limit)."""
    from ray import tune

    scaling = plan.exp.scaling
    # read here, in the CLI's process: actors on a cluster do not inherit its environment
    fallback = os.environ.get(CPU_FALLBACK_ENV, "") == "1"
    common = dict(module=plan.workload.module, configs=plan.configs, artifact_dirs=plan.artifact_dirs,
                  allow_cpu_fallback=fallback)
    if plan.distributed:
        driver = tune.with_parameters(actors.train_driver, **common, scaling=scaling, storage=plan.storage,
                                      score=plan.workload.ranked_by,
                                      names=train_run_names(plan.storage, plan.names, plan.attempts, say),
                                      placement=capacity.placement_strategy(scaling, joined))
        # the driver only waits on its TorchTrainer's workers: no CPU
        fits = capacity.max_concurrent(scaling, joined, say)
        return tune.with_resources(driver, {"cpu": 0, DRIVER_RESOURCE: 1}), _at_most(fits, len(plan.configs))
    need, fits = capacity.single_process_resources(scaling, joined)
    if fits is not None and not scaling.max_concurrent_trials and not scaling.use_gpu:
        seconds = [plan.workload.estimated_seconds(c) for c in plan.configs]
        up = capacity.short_trials_slots(need, seconds, scaling)
        if up is not None and up < min(fits, len(plan.configs)):
            say(f"[{plan.study}] {len(seconds)} short trials (~{sum(seconds):.0f} s of compute in all): on the "
                f"{up} CPU slot{'s' * (up != 1)} free now, no node started for them (one boots in ~{scaling.node_boot_s:g} s: "
                "node_boot_s)")
            fits = up
    earlier = plan.earlier_checkpoints()
    if any(earlier):
        say(f"PBT: {sum(map(bool, earlier))} trial(s) resume from an earlier run's checkpoints (--fresh starts over)")
    trial = tune.with_parameters(tune_trial.function_trial, **common, use_gpu=scaling.use_gpu, checkpoints=plan.pbt,
                                 earlier=earlier)
    resources = {"cpu": need.pop("CPU"), "gpu": need.pop("GPU", 0), **need}
    return tune.with_resources(trial, resources), _at_most(scaling.max_concurrent_trials or fits, len(plan.configs))


def _at_most(fits: int | None, trials: int) -> int | None:
    """Never more trials at once than the study has (None: no limit): what the autoscaler is asked for
    follows the work, not the cluster's largest size."""
    return None if fits is None else max(1, min(fits, trials))
