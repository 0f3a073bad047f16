"""What the command line's names and overrides resolve to: `run gan --set lr=2e-4 --sweep ...` ->
validated experiments (resolve), and the workloads' own checks of every trial's config (data
present, caches built, encoders available offline) before Ray starts (preflight). Bad input fails
here with one line (SpecError), before any result is touched.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from orchestrator import progress
from orchestrator.studies import sweeps as sweep_grammar
from orchestrator.studies.experiments import EXPERIMENTS, studies
from orchestrator.studies.registry import WORKLOADS
from orchestrator.studies.spec import Experiment, SpecError, split_overrides
from workloads.common import CACHE_ENV, DATA_ENV


def resolve(study: str, profile: str, overrides: list[str], data_dir: str | None = None, sweeps: list[str] = (),
            seeds: int | None = None, say=print, samples: int | None = None, sample_seed: int = 0,
            scheduler: str = "fifo") -> list[Experiment]:
    """Names, --set, --sweep, --samples, --seeds and --scheduler -> validated experiments, in run order."""
    names = studies() if study == "all" else [study]
    if study != "all" and study not in EXPERIMENTS:
        raise SpecError(f"unknown study {study!r}; choose from {', '.join(studies())} or all")
    per_study = split_overrides(overrides, names, all_studies=study == "all")
    swept = split_overrides(list(sweeps), names, all_studies=study == "all", flag="--sweep")
    out = []
    for name in names:
        exp = EXPERIMENTS[name][profile]
        settings = dict(per_study[name])
        if data_dir is not None and hasattr(exp.config, "data_dir"):
            settings.setdefault("data_dir", data_dir)
        exp = exp.with_overrides(settings)
        if seeds is not None and (study != "all" or hasattr(exp.config, "seed")):  # under all: studies with a seed
            exp = dataclasses.replace(exp, seeds=seeds)
        before = len(exp.trial_configs()) // exp.seeds
        randomised = any(sweep_grammar.is_random(raw) for raw in swept[name].values())
        # under all, --samples applies to the studies with a random axis (checked below: at least one)
        exp = exp.with_sweep(swept[name], samples if randomised or study != "all" else None, sample_seed)
        if swept[name]:
            draws = f", {samples} draws" if randomised else ""
            say(f"[{name}] --sweep {' x '.join(f'{k}={v}' for k, v in swept[name].items())}{draws}: "
                f"{(n := len(exp.trial_configs()) // exp.seeds)} configuration{'s' * (n != 1)} (replacing the {profile} "
                f"profile's {before})"
                f"{f' x {exp.seeds} seeds' if exp.seeds > 1 else ''}")
        if scheduler != "fifo":
            why = _scheduler_unfit(name, scheduler, exp)
            if why and study != "all":
                raise SpecError(f"{name}: --scheduler {scheduler}: {why}")
            if why:
                say(f"[{name}] --scheduler {scheduler}: {why}: every trial runs to its end")
            else:
                exp = dataclasses.replace(exp, scheduler=scheduler)
        if exp.scaling.use_gpu and not WORKLOADS[name].gpu:
            raise SpecError(f"{name}: use_gpu=true, but its trials are NumPy: they never use a GPU")
        keys = exp.trial_keys()
        if len(set(keys)) < len(keys):
            raise SpecError(f"{name}: {len(keys) - len(set(keys))} trials repeat others (e.g. --sweep seed=... with "
                            "--seeds N > 1 gives overlapping seeds): sweep seeds with --seeds alone")
        out.append(dataclasses.replace(exp, config=_absolute_dirs(exp.config)))
    if samples is not None and not any(sweep_grammar.is_random(raw) for axes in swept.values() for raw in axes.values()):
        raise SpecError(f"--samples {samples} needs a random --sweep axis (FIELD=loguniform(A,B), uniform(A,B) or "
                        "choice(...))")
    return out


def _scheduler_unfit(name: str, scheduler: str, exp: Experiment) -> str | None:
    """Why `scheduler` cannot drive this study's trials (None: it can)."""
    workload = WORKLOADS[name]
    if workload.early_stop is None:
        return f"{name} reports once per trial, at its end: nothing to compare during training"
    if scheduler == "pbt" and not workload.pbt:
        return f"PBT is offered for the GAN (it perturbs {name}'s nothing); use asha"
    configs = exp.trial_configs()
    if scheduler == "pbt" and len(configs) < 2:
        return "PBT needs a population: at least 2 trials (e.g. --sweep lr=1e-4,2e-4,4e-4)"
    if scheduler == "pbt":  # an exploit copies weights and optimiser state: the trials must fit each other's
        other = sorted({f.name for f in dataclasses.fields(configs[0]) if f.name not in (*workload.pbt, "seed")
                        and len({repr(getattr(c, f.name)) for c in configs}) > 1})
        if other:
            return (f"PBT's trials may differ only in {', '.join(workload.pbt)} (and seed): an exploit copies another "
                    f"trial's weights and optimiser state, which {', '.join(other)} would not fit; run one PBT per value")
    return None


def _absolute_dirs(config):
    """data_dir / cache_dir (from --set, --data-dir or the environment) as absolute paths, fixed here in
    the driver: Ray workers run in another directory, so a relative path would point elsewhere there."""
    changes = {}
    for field, env in (("data_dir", DATA_ENV), ("cache_dir", CACHE_ENV)):
        if hasattr(config, field):
            value = getattr(config, field) or os.environ.get(env, "")
            if value:
                changes[field] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **changes) if changes else config


ON_CLUSTER_HINT = ("; on a cluster, put it on the shared storage every node reads, e.g. "
                   "`ray rsync-up cluster.yaml ../shared/data/ /mnt/shared/data/`")


def preflight(experiments: list[Experiment], on_cluster: bool = False) -> None:
    """Workload checks (data present, caches built, encoders and tokenizers available offline) of
    every trial's config, before Ray starts; failures are one line. Trials that differ only in
    what the check does not read (e.g. a learning rate) are checked once per distinct config."""
    for exp in experiments:
        if len({WORKLOADS[exp.study].runs_distributed(c) for c in exp.trial_configs()}) > 1:
            raise SpecError(f"{exp.study}: the sweep mixes Train trials and single-process ones (frozen and "
                            "fine-tuned encoders): run them as two runs")
        seen = set()
        for config in exp.trial_configs():
            if exp.key(config) in seen:
                continue
            seen.add(exp.key(config))
            try:
                WORKLOADS[exp.study].check(config, say=progress.terminal(exp.study))
            except (OSError, ValueError, ImportError) as exc:
                hint = ON_CLUSTER_HINT if on_cluster and isinstance(exc, FileNotFoundError) else ""
                raise SpecError(f"{exp.study}: {str(exc).rstrip('.')}{hint}") from None
            finally:
                progress.close_steps(f"[{exp.study}] ")  # a step cut short by an error stays drawn otherwise
