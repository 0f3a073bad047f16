"""Experiment specs: a study's typed config, how it fans out into trials, and how it is scaled.

`--set KEY=VALUE` overrides are parsed against the dataclass field types and validated by the
config's own `__post_init__`, so a typo, a wrong type or an out-of-range value fails here, with one
line, before Ray starts.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.studies import sweeps


# Fields that say where things are on this machine, not what the trial computes: moving the data
# folder or the cache must not change a trial's identity (nor break resume).
LOCAL_FIELDS = ("data_dir", "cache_dir")
# Scaling fields that change what a trial computes: the DDP world size (each rank's share of a batch,
# BatchNorm's per-rank statistics, the sampler's shards), the device (CUDA's kernels are not the CPU's)
# and SyncBatchNorm (it acts only on multi-GPU DDP). The others (gpus_per_worker, retries, waits) say
# how trials share nodes and recover: a trial packed at 0.25 GPU computes what it does on a whole one.
# cpus_per_worker is left out too, although Ray sets a CPU worker's torch threads from it, which can
# move the last bits of CPU reductions (rows record the machine; see docs/results.md). result_scaling
# below is the one place that says which.


def trial_key(config: Any, scaling: "Scaling | None" = None, study: str = "", distributed: bool = True,
              pbt: bool = False) -> str:
    """A trial's identity: a digest of what sets its result: its study, the config fields that differ
    from the config class's defaults (machine-local paths aside), the Scaling it computes under
    (`distributed`: a Train run; else one process, whatever num_workers says) and PBT (which moves its
    hyperparameters). Same computation, same key, on every run and every machine; a config that gains a
    field at its default keeps its keys (the results before it stay results). The code version is not
    part of it (rows record it), nor are the defaults themselves (rows record `defaults_key`; a kept
    row whose recorded config differs from today's is rerun: cli/kept.py)."""
    identity: dict[str, Any] = {f"config.{k}": v for k, v in _moved(config).items() if k not in LOCAL_FIELDS}
    if study:
        identity["study"] = study
    if scaling is not None:
        identity.update({f"scaling.{k}": v for k, v in result_scaling(scaling, distributed).items()})
    if pbt:
        identity["scheduler"] = "pbt"
    return _digest(identity)


def result_scaling(scaling: "Scaling", distributed: bool = True) -> dict[str, Any]:
    """What of `scaling` a trial computes under: its workers (1 when it is one process), whether on
    GPUs, and sync_bn where it acts (several GPU workers). Explicit values, not moved-from-default
    ones: a release that changes a Scaling default changes the keys of the trials it changes."""
    workers = scaling.num_workers if distributed else 1
    out: dict[str, Any] = {"num_workers": workers, "use_gpu": scaling.use_gpu}
    if scaling.use_gpu and workers > 1:
        out["sync_bn"] = scaling.sync_bn
    return out


def defaults_key(config: Any) -> str:
    """A digest of the config class's defaults (recorded in trial rows): two rows of one trial key
    whose defaults_key differ were computed under different defaults, e.g. across a code change."""
    return _digest({f.name: _default(f) for f in dataclasses.fields(config) if f.name not in LOCAL_FIELDS})


def legacy_key(config: Any) -> str:
    """The trial key of results format 2 (every field but local paths): how rows written before
    format 3 name their trials; the store maps them to today's keys (ResultStore.finished)."""
    return _digest({k: v for k, v in dataclasses.asdict(config).items() if k not in LOCAL_FIELDS})


def _moved(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance whose values differ from its class's defaults (compared as
    JSON: (10, 30) equals [10, 30]); a field without a default always counts."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = _default(f)
        if default is dataclasses.MISSING or _json(value) != _json(default):
            out[f.name] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _json(value: Any) -> str:
    return json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value, sort_keys=True,
                      default=str)


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


SCHEDULERS = ("fifo", "asha", "pbt")


def _did_you_mean(name: str, known) -> str:
    """'; did you mean 'steps'?' for a near miss; where the settings are listed, always."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return (f"; did you mean {close[0]!r}?" if close else "") + " (`python -m orchestrator list` shows every setting)"


class SpecError(ValueError):
    """Bad user input in a spec or an override: the CLI prints it as one line."""


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 1  # Ray Train workers (DDP ranks) per trial
    use_gpu: bool = False  # train on GPUs (gpus_per_worker each)
    gpus_per_worker: float = 1.0  # with use_gpu: a fraction (e.g. 0.25) packs single-worker trials onto one GPU
    cpus_per_worker: float = 1.0  # CPUs reserved per worker (or per trial, for single-process studies)
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs/GPUs hold at once
    max_failures: int = 2  # restarts after a real failure (Train: from the last checkpoint; single-process: Tune's retry)
    max_preemptions: int = -1  # Train runs: restarts after a node drained for preemption (a spot reclaim); -1: no limit
    sync_bn: bool = True  # multi-GPU DDP: BatchNorm -> SyncBatchNorm (CUDA only; CPU DDP keeps per-rank statistics)
    max_wait_s: float = 1800.0  # a trial waiting this long for nodes ends the run with the autoscaler's reason (0: wait forever)
    node_boot_s: float = 180.0  # a new node's boot time: short CPU trials the nodes up finish sooner run there (0: never)
    keep_best: int = 1  # Train checkpoints kept besides the latest: the best by the selection metric (-1: all; PBT: all)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if not self.gpus_per_worker > 0:
            raise ValueError(f"gpus_per_worker must be > 0, got {self.gpus_per_worker}")
        if self.use_gpu and self.gpus_per_worker < 1 and self.num_workers > 1:  # Ray issue 48012
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker:g} with num_workers={self.num_workers}: fractional "
                             "GPUs put several DDP workers on one GPU, where NCCL fails; pack single-worker trials "
                             "(num_workers=1) or give each worker whole GPUs")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1 (-1: retry forever), got {self.max_failures}")
        if self.max_preemptions < -1:
            raise ValueError(f"max_preemptions must be >= -1 (-1: no limit), got {self.max_preemptions}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 (0: wait forever), got {self.max_wait_s}")
        if self.node_boot_s < 0:
            raise ValueError(f"node_boot_s must be >= 0 (0: size trials to the cluster's largest), got {self.node_boot_s}")
        if self.keep_best < -1:
            raise ValueError(f"keep_best must be >= -1 (-1: keep every checkpoint), got {self.keep_best}")
        if self.max_concurrent_trials < 0:
            raise ValueError(f"max_concurrent_trials must be >= 0, got {self.max_concurrent_trials}")


@dataclass(frozen=True)
class Experiment:
    study: str  # registry key of the workload
    profile: str  # "local" or "paper"
    summary: str  # one line for `list`: what this profile does
    config: Any  # the workload's frozen Config
    scaling: Scaling = field(default_factory=Scaling)
    # config -> one dict of config overrides per trial (the Tune grid); default: a single trial
    sweep: Callable[[Any], list[dict]] | None = None
    seeds: int = 1  # each configuration of the sweep runs with seeds seed, seed+1, ... (the config's `seed`)
    scheduler: str = "fifo"  # Tune's trial scheduler: fifo (every trial to its end), asha (early stopping), pbt
    changed: tuple[str, ...] = ()  # config fields --set moved off the profile's values (trial names show them)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise SpecError(f"{self.study}: --seeds must be >= 1, got {self.seeds}")
        if self.scheduler not in SCHEDULERS:
            raise SpecError(f"{self.study}: --scheduler {self.scheduler}: choose from {', '.join(SCHEDULERS)}")
        if self.seeds > 1 and not hasattr(self.config, "seed"):
            raise SpecError(f"{self.study}: --seeds {self.seeds}: this study has no random seed (it is deterministic)")

    def trial_points(self) -> list[tuple[dict, Any]]:
        """(the sweep's overrides, config) of every trial, in a stable order: seed-major (every
        configuration with the first seed, then with the next), so that trials running at once share as
        little as possible (e.g. CLIP pairs extracting their encoders' features side by side, not
        waiting on one another's)."""
        overrides = self.sweep(self.config) if self.sweep else [{}]
        points = [(o, dataclasses.replace(self.config, **o)) for o in overrides]
        if self.seeds == 1:
            return points
        return [(o, dataclasses.replace(c, seed=c.seed + s)) for s in range(self.seeds) for o, c in points]

    def trial_configs(self) -> list[Any]:
        return [config for _, config in self.trial_points()]

    def key(self, config: Any) -> str:
        """A trial's key under this experiment's scaling and scheduler (trial_key)."""
        from orchestrator.studies.registry import WORKLOADS

        pbt = self.scheduler == "pbt"  # PBT trials are single-process (plan.TrialPlan.distributed)
        workload = WORKLOADS.get(self.study)
        distributed = workload is None or (workload.runs_distributed(config) and not pbt)
        return trial_key(config, self.scaling, self.study, distributed, pbt)

    def trial_keys(self) -> list[str]:
        return [self.key(c) for c in self.trial_configs()]

    def trial_names(self) -> list[str]:
        """Readable names, e.g. `gan-lr=0.0002,beta1=0.5` (`,seed=43` with several seeds); names that
        rounding makes equal (lr=1e-4 and 1.00001e-4) get their trial key's start: names stay unique."""
        points = self.trial_points()
        names = [sweeps.trial_name(self.study, {**self.set_values(c, o), **o}, c.seed if self.seeds > 1 else None)
                 for o, c in points]
        counts = collections.Counter(names)  # one pass (list.count per name was n^2 comparisons)
        return [f"{n}#{self.key(c)[:6]}" if counts[n] > 1 else n for n, (_, c) in zip(names, points)]

    def set_values(self, config: Any, swept: dict | None = None) -> dict:
        """The --set values of a trial's config that differ from the profile's (its sweep's aside): what
        its name and the runs table show of how this run differs from the default one."""
        return {k: getattr(config, k) for k in self.changed if k not in (swept or {})}

    def with_sweep(self, axes: dict[str, str], samples: int | None = None, sample_seed: int = 0) -> "Experiment":
        """`--sweep` axes (grids and random ones, see sweeps.py) -> the trials, replacing the profile's
        sweep. Values are parsed and random ones drawn here, and every trial's config validated, before
        Ray starts."""
        if not axes:
            if samples is not None:
                raise SpecError(f"{self.study}: --samples {samples} needs a random --sweep axis")
            return self
        hints = typing.get_type_hints(type(self.config))
        parsed = []
        for name, raw in axes.items():
            if name not in hints:
                scaling = " (a scaling setting: use --set)" if name in {f.name for f in dataclasses.fields(Scaling)} else ""
                raise SpecError(f"{self.study}: --sweep {name}: unknown config field{scaling}{_did_you_mean(name, hints)}")
            try:
                parsed.append(sweeps.parse_axis(name, raw, hints[name],
                                                lambda value, name=name: parse_value(type(self.config), name, value)))
            except sweeps.SweepError as exc:
                raise SpecError(f"{self.study}: {exc}") from None
            except SpecError as exc:  # a value of the wrong type
                raise SpecError(f"{self.study}: --sweep {exc}") from None
        try:
            points = sweeps.expand(self.study, parsed, samples, sample_seed)
        except sweeps.SweepError as exc:
            raise SpecError(str(exc)) from None
        swept = dataclasses.replace(self, sweep=lambda config: points)
        try:
            swept.trial_configs()
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{self.study}: --sweep: {exc}") from None
        return swept

    def with_overrides(self, overrides: dict[str, str]) -> "Experiment":
        """Apply `field=value` strings to the config (or, for scaling fields, to the scaling)."""
        cfg_fields = {f.name for f in dataclasses.fields(self.config)}
        scale_fields = {f.name for f in dataclasses.fields(self.scaling)}
        cfg_changes, scale_changes = {}, {}
        for key, raw in overrides.items():
            if key not in cfg_fields | scale_fields:
                raise SpecError(f"{self.study}: unknown setting {key!r}{_did_you_mean(key, cfg_fields | scale_fields)}")
            cls, changes = (type(self.config), cfg_changes) if key in cfg_fields else (Scaling, scale_changes)
            try:
                changes[key] = parse_value(cls, key, raw)
            except SpecError as exc:
                raise SpecError(f"{self.study}: {exc}") from None
        try:
            config = dataclasses.replace(self.config, **cfg_changes)
            moved = [k for k in cfg_changes if k not in LOCAL_FIELDS and getattr(config, k) != getattr(self.config, k)]
            return dataclasses.replace(self, config=config, scaling=dataclasses.replace(self.scaling, **scale_changes),
                                       changed=tuple(dict.fromkeys([*self.changed, *moved])))
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{self.study}: {exc}") from None


def parse_value(cls: type, name: str, raw: str) -> Any:
    """Turn a command-line string into the declared type of `cls.name`."""
    hint = typing.get_type_hints(cls)[name]
    try:
        return _parse(hint, raw.strip())
    except (ValueError, TypeError):
        raise SpecError(f"{name}={raw!r}: expected {_describe(hint)}") from None


def _parse(hint: Any, raw: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: "none" -> None
        if raw.lower() in ("none", "null", ""):
            return None
        return _parse(next(a for a in args if a is not type(None)), raw)
    if origin is tuple:  # tuple[X, ...]: comma-separated
        item = args[0]
        return tuple(_parse(item, part.strip()) for part in raw.split(",") if part.strip())
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if hint is int:
        value = float(raw)  # accepts 1e3
        if not value.is_integer():
            raise ValueError(raw)
        return int(value)
    if hint is float:
        return float(raw)
    if hint is str:
        return raw
    raise TypeError(f"unsupported setting type {hint}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a comma-separated list of {_describe(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "none" for a in args)
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def split_overrides(pairs: list[str], studies: list[str], all_studies: bool, flag: str = "--set") -> dict[str, dict[str, str]]:
    """`["steps=5", "gan.lr=1e-4"]` -> {study: {field: raw}}; a bare key needs a single study."""
    out: dict[str, dict[str, str]] = {s: {} for s in studies}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"{flag} {pair!r}: expected KEY=VALUE")
        study, dot, name = key.partition(".")
        if dot:
            if study not in out:
                raise SpecError(f"{flag} {pair!r}: {study!r} is not a study being run ({', '.join(studies)})")
            out[study][name] = raw
        elif all_studies or len(studies) != 1:
            raise SpecError(f"{flag} {pair!r}: under 'run all' name the study, e.g. STUDY.{key}={raw} "
                            f"(STUDY: {', '.join(studies)}; `list` shows each study's settings)")
        else:
            out[studies[0]][key] = raw
    return out
