"""What one Tune run of an experiment runs: its pending trials, and the names of their files.

A trial's files (its steps parts, artifacts, Train run) are named by its attempt: its key, the
digest of what sets its result (`key-run_id` under --fresh), so that a rerun of an interrupted run
finds them: Train V2 resumes a run from its storage by name, and the steps of a trial row are those
of its attempt, across the runs that resumed it. Its row is named by attempt and run: every run's
ending of a trial (an ERROR, then a TERMINATED) stays on record.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from orchestrator.results import schemas
from orchestrator.results.provenance import code_version
from orchestrator.results.store import ResultStore, config_columns
from orchestrator.studies.registry import Workload
from orchestrator.studies.spec import Experiment


@dataclass
class TrialPlan:
    """The pending trials of one experiment in one run; trial i's values are the i-th of each list."""

    exp: Experiment
    workload: Workload
    run_id: str
    kept: pd.DataFrame  # trials finished in earlier runs (the caller's store.finished rows)
    params: list[dict]  # what the sweep set, e.g. {"lr": 0.0002} (a record: configs already hold it)
    configs: list  # the workload's Config of each trial
    names: list[str]  # readable, e.g. gan-lr=0.0002
    keys: list[str]  # config digests (spec.trial_key)
    attempts: list[str]  # the base name of each trial's files: its key (key-run_id under --fresh)
    artifact_dirs: list[str]  # absolute: actors run in other directories, on other nodes
    storage: str  # Ray's storage: Tune's experiment folders, Train runs and their checkpoints
    total: int  # the experiment's trials, kept ones included
    _earlier: list | None = None  # earlier_checkpoints(), once found
    version: str = dataclasses.field(default_factory=code_version)

    @classmethod
    def make(cls, exp: Experiment, workload: Workload, store: ResultStore, run_id: str, kept: pd.DataFrame | None,
             fresh: bool, storage: str | None, again: frozenset[str] = frozenset()) -> "TrialPlan":
        kept = pd.DataFrame() if kept is None or fresh else kept
        skip = set(kept["trial_key"]) if len(kept) else set()
        points = exp.trial_points()
        pending = [(point, config, name) for (point, config), name in zip(points, exp.trial_names())
                   if exp.key(config) not in skip]
        params, configs, names = ([p[i] for p in pending] for i in range(3))
        keys = [exp.key(c) for c in configs]
        attempts = [f"{key}-{run_id}" if fresh or key in again else key for key in keys]  # again: cli/kept.py
        return cls(exp, workload, run_id, kept, params, configs, names, keys, attempts,
                   [str((store.root / exp.study / "artifacts" / a).resolve()) for a in attempts],
                   storage or str((store.root / "_ray").resolve()), len(points))

    @property
    def study(self) -> str:
        return self.exp.study

    @property
    def run_key(self) -> str:
        """Names this run of the study: its Tune experiment, its progress bar."""
        return f"{self.study}-{self.run_id}"

    @property
    def experiment_name(self) -> str:
        """Tune's experiment: one per run, except under PBT: one per study, so that a resubmitted run
        finds its trials' Tune checkpoints (tune_trial.py)."""
        return f"{self.study}-pbt" if self.pbt else self.run_key

    def earlier_checkpoints(self) -> list[str | None]:
        """Under PBT, each trial's latest Tune checkpoint from an earlier run (None: start afresh). Found
        once, before the run: the earlier runs' folders are set aside first, so that this run's Tune
        (which numbers checkpoints from 0 again) writes fresh folders and never over one of them."""
        from orchestrator.engine import tune_trial

        if not self.pbt:
            return [None] * len(self.configs)
        if self._earlier is None:
            experiment = Path(self.storage) / self.experiment_name
            self._earlier = [tune_trial.latest_checkpoint(tune_trial.set_aside(experiment, attempt, self.run_id), attempt)
                             for attempt in self.attempts]
        return self._earlier

    def held(self) -> tuple[float, float]:
        """(CPUs, GPUs) one trial holds while it runs: every Train worker's share (the driver holds
        none), or the single process's."""
        scaling = self.exp.scaling
        workers = scaling.num_workers if self.distributed else 1
        return workers * scaling.cpus_per_worker, workers * scaling.gpus_per_worker * scaling.use_gpu

    @property
    def pbt(self) -> bool:
        return self.exp.scheduler == "pbt"

    @property
    def distributed(self) -> bool:
        """Trials are Train driver trials (DDP workers); else single-process Tune trials. PBT trials are
        always single-process: PBT exploits by restarting a trial from another's Tune checkpoint, which a
        trial driving a TorchTrainer does not hold (as in Ray's PBT DCGAN example)."""
        return self.workload.runs_distributed(self.configs[0]) and not self.pbt

    def epochs(self, index: int) -> int:
        """Trial `index`'s epochs (0: the workload reports no steps)."""
        return int(getattr(self.configs[index], "epochs", 0) or 0) if self.workload.step_key else 0

    def row_part(self, index: int) -> str:
        """The name of trial `index`'s row in this run: its attempt and the run (once under --fresh)."""
        attempt = self.attempts[index]
        return attempt if attempt.endswith(self.run_id) else f"{attempt}-{self.run_id}"

    def ids(self, index: int, trial_id: str) -> dict[str, Any]:
        """The columns that say which trial, attempt and run a row belongs to."""
        return {"run_id": self.run_id, "study": self.study, "trial_id": trial_id, "trial_key": self.keys[index],
                "trial_name": self.names[index], "attempt": self.attempts[index], "code_version": self.version}

    def config_columns(self, index: int) -> dict[str, Any]:
        return config_columns(dataclasses.asdict(self.configs[index]), self.workload.row_exclude)

    def schema(self, table: str):
        """Every part of a table gets its whole schema (schemas.py)."""
        return schemas.table_schema(table, self.workload.columns.get(table, {}), self.configs[0],
                                    self.workload.row_exclude)

    def param_space(self) -> dict:
        """Tune's trial configs: each trial's index into `configs`, its name (what its sweep set) and
        under PBT its folder, and the fields PBT perturbs, which PBT reads and changes there (the trial
        applies them, actors.trial_config). Nothing else: Tune copies and serialises every trial's config
        (variant generation, experiment-state snapshots) at a cost that grows with its size, so the
        sweep's values (minimax: 128 lrs a trial) made a 785-trial study 2.6x a bare Tune run of it. The
        name creators read name and folder from here (trial_name, trial_dirname): a closure over this
        plan was pickled into every trial's spec, O(trials) bytes each."""
        from ray import tune

        def point(index: int) -> dict:
            perturbed = {f: getattr(self.configs[index], f) for f in self.workload.pbt} if self.pbt else {}
            if self.pbt and self.earlier_checkpoints()[index]:  # where PBT had moved it: Tune holds those values
                from orchestrator.engine.tune_trial import origin_values

                perturbed.update(origin_values(self.earlier_checkpoints()[index], self.workload.pbt))
            folder = {"dir": self.attempts[index]} if self.pbt else {}  # stable across runs (trial_dirname)
            return {"index": index, "name": self.names[index], **folder, **perturbed}

        return {"trial": tune.grid_search([point(i) for i in range(len(self.configs))])}

    def tracker_params(self) -> list[dict]:
        """Each trial's whole config, flat, for MLflow / W&B runs."""
        return [{**self.config_columns(i), "trial_name": n, "trial_key": k}
                for i, (n, k) in enumerate(zip(self.names, self.keys))]

    def tensorboard_view(self, study_dir: Path, say: Callable[[str], None]) -> None:
        """This run's TensorBoard view: the trials it keeps and the ones it runs, by name."""
        kept = self.kept.drop_duplicates("trial_key") if len(self.kept) and "attempt" in self.kept else None
        kept_names = {} if kept is None else dict(zip(
            kept["trial_name"].fillna(kept["trial_key"]) if "trial_name" in kept else kept["trial_key"], kept["attempt"]))
        tensorboard_view(study_dir, self.run_id, {**kept_names, **dict(zip(self.names, self.attempts))}, say)


def train_run_names(storage: str, names: list[str], bases: list[str],
                    say: Callable[[str], None] = lambda _: None) -> list[str]:
    """Each Train run's name, its folder under `storage` and its name in the Train state API: the
    trial's name and its files' base, e.g. `gan-lr=0.0002,beta1=0.5-3fa2c1d0e9ab`. Train V2 resumes a
    run from its storage by name, so a trial whose folder is already there under another name (its
    config named by another sweep's axes, or an older version's `<study>-<base>`) keeps it (the
    newest, where several are)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(storage if "://" in storage else os.path.abspath(storage))
        there = [(info.mtime_ns or 0, info.base_name)
                 for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                 if info.type == pafs.FileType.Directory]
    except (OSError, ValueError, NotImplementedError, pa.ArrowException) as exc:
        say(f"cannot list {storage} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): trials "
            "interrupted in an earlier run under another name start over")
        there = []
    chosen = []
    for name, base in zip(names, bases):
        earlier = sorted(d for d in there if d[1].endswith(f"-{base}"))
        chosen.append(earlier[-1][1] if earlier else f"{path_segment(name, 100)}-{base}")
    return chosen


def path_segment(name: str, limit: int = 120, portable: bool = True) -> str:
    """A trial's name as one file-name component: odd characters replaced (`portable`: all but
    [A-Za-z0-9._=,+-], for any storage; else only "/"), and a long name (many --set values) cut with a
    digest of the whole, so that names stay unique and under the 255-byte limit of a path component."""
    import hashlib

    readable = re.sub(r"[^A-Za-z0-9._=,+-]", "_", str(name)) if portable else str(name).replace("/", "_")
    if len(readable) <= limit:
        return readable
    return f"{readable[:limit - 13]}~{hashlib.sha1(str(name).encode()).hexdigest()[:12]}"


def tensorboard_view(study_dir: Path, run_id: str, attempts: dict[str, str], say: Callable[[str], None]) -> None:
    """`<study>/tensorboard/<run_id>/<trial name>` -> each trial's TensorBoard folder (relative links):
    `tensorboard --logdir results/gan/tensorboard/<run_id>` shows a run's trials side by side, by name."""
    view = study_dir / "tensorboard" / run_id
    try:
        view.mkdir(parents=True, exist_ok=True)
        for name, attempt in attempts.items():
            link = view / path_segment(name, portable=False)
            if not link.is_symlink():
                link.symlink_to(os.path.join("..", "..", "artifacts", attempt, "tensorboard"))
    except OSError as exc:  # storage without symlinks: the artifacts' own folders still hold every log
        say(f"no TensorBoard view of this run ({exc.strerror or exc}): use --logdir {study_dir / 'artifacts'}")


def trial_name(trial) -> str:
    """Tune's trial_name_creator: what the sweep set (gan-lr=0.0002,beta1=0.5)."""
    return trial.config["trial"]["name"]


def trial_dirname(trial) -> str:
    """Tune's trial_dirname_creator: under PBT the trial's attempt (stable across runs, so a later run
    finds its checkpoints), else its id."""
    return trial.config["trial"].get("dir") or trial.trial_id
