"""The driver side of Tune: run an experiment as one Tune run, turn results into table rows. (Starting
Ray is ray_session.py, sizing trials to the cluster ray_cluster.py; what runs inside Ray actors is
ray_workers.py: these two are the only modules that import ray.tune / ray.train.)

One experiment = one Tune run over the spec's trial configs: a single-process workload runs as a
Tune function trial, a distributed one as a Train V2 driver trial (ray_workers.train_driver).

Rows reach the driver through a Tune `Callback` (it runs in this process). Epoch rows of Train
trials are written as they arrive (one file per trial and epoch); the other tables and the trial
row when the trial ends. So an interrupted run keeps every finished trial and every finished epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from orchestrator import progress as progress_lines
from orchestrator import ray_cluster, ray_schedulers, ray_session, ray_trackers, ray_workers, schemas
from orchestrator.progress import Tail as ProgressTail
from orchestrator.provenance import code_version
from orchestrator.registry import Workload
from orchestrator.results import ABORTED, EARLY, FINISHED, STOPPED, ResultStore, StoreError, config_columns, report_frame
from orchestrator.ray_session import DRIVER_RESOURCE, BackendError
from orchestrator.spec import Experiment, trial_key
from workloads.runtime import REPLAY_KEY, TABLE_KEY

EPOCH_LINE_EVERY_S = 10.0  # a trial's epoch lines: at most one per this many seconds (and its first, last, sampled)
CPU_FALLBACK_ENV = "ORCHESTRATOR_ALLOW_CPU_FALLBACK"  # "1": GPU nodes without CUDA train on CPU (gloo), rows say so
_TUNE_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "time_since_restore",
    "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name", "node_ip",
    "hostname", "pid", "episodes_total", "timesteps_total", "trial_id", "experiment_tag", "done",
    "should_checkpoint", "__duplicate__", "experiment_id", "checkpoint_path", TABLE_KEY, REPLAY_KEY,
}


_FAILED: dict[str, Exception] = {}  # experiment key -> the write error that stops it (see StopOnFailure)
_WATCHERS: dict = {}  # experiment key -> its ray_cluster.Watcher, told of every result


# ---- the driver side -----------------------------------------------------------------------------

def _collector_classes():
    from ray import tune

    class Collector(tune.Callback):
        """Turns results into rows and writes them. A write that fails (disk full, read-only) is kept
        in `failure` rather than raised (Tune would wrap it in a traceback); the stopper below then
        ends the run and run_experiment raises it as one line."""

        def __init__(self, key: str, on_result: Callable, on_end: Callable, on_start: Callable) -> None:
            self.key, self.on_result, self.on_end, self.on_start = key, on_result, on_end, on_start
            self.failure: StoreError | None = None

        def _guard(self, fn, *args) -> None:
            if self.failure is None:
                try:
                    fn(*args)
                except StoreError as exc:
                    self.failure = _FAILED[self.key] = exc

        def on_trial_result(self, iteration, trials, trial, result, **info):
            _progress(self.key)
            metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS}
            self._guard(self.on_result, trial.config["trial"]["index"], metrics, result.get(TABLE_KEY, "steps"), result,
                        trial.trial_id)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._guard(self.on_start, trial.config["trial"]["index"], trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._guard(self.on_end, trial.config["trial"]["index"], trial.trial_id, FINISHED, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._guard(self.on_end, trial.config["trial"]["index"], trial.trial_id, "ERROR", _trial_error(trial))

    class StopOnFailure(tune.stopper.Stopper):
        """Stops every trial once the collector failed. Holds only a key into _FAILED: Tune pickles
        its stopper with the experiment state, and the collector (closures over this run) is not."""

        def __init__(self, key: str) -> None:
            self.key = key

        def __call__(self, trial_id, result) -> bool:
            return self.key in _FAILED

        def stop_all(self) -> bool:
            return self.key in _FAILED

    return Collector, StopOnFailure


def train_run_names(storage: str, names: list[str], bases: list[str],
                    say: Callable[[str], None] = lambda _: None) -> list[str]:
    """Each Train run's name, its folder under `storage` and its name in the dashboard's Train view:
    the trial's name and its files' base, e.g. `gan-lr=0.0002,beta1=0.5-3fa2c1d0e9ab`. Train V2
    resumes a run from its storage by name, so a trial whose folder is already there under another
    name (its config named by another sweep's axes, or an older version's `<study>-<base>`) keeps it
    (the newest, where several are)."""
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
        readable = re.sub(r"[^A-Za-z0-9._=,+-]", "_", str(name))[:100]  # a path segment on any storage
        chosen.append(earlier[-1][1] if earlier else f"{readable}-{base}")
    return chosen


def tensorboard_view(study_dir, run_id: str, attempts: dict[str, str], say: Callable[[str], None]) -> None:
    """`<study>/tensorboard/<run_id>/<trial name>` -> each trial's TensorBoard folder (relative links):
    `tensorboard --logdir results/gan/tensorboard/<run_id>` shows a run's trials side by side, by name."""
    view = study_dir / "tensorboard" / run_id
    try:
        view.mkdir(parents=True, exist_ok=True)
        for name, attempt in attempts.items():
            link = view / str(name).replace("/", "_")
            if not link.is_symlink():
                link.symlink_to(os.path.join("..", "..", "artifacts", attempt, "tensorboard"))
    except OSError as exc:  # storage without symlinks: the artifacts' own folders still hold every log
        say(f"no TensorBoard view of this run ({exc.strerror or exc}): use --logdir {study_dir / 'artifacts'}")


def _progress(key: str) -> None:
    """Tell the experiment's watcher that a trial reported. A module-level function: Tune pickles
    the collector (a local class, so by value, with the globals its methods name); this is
    pickled by reference, and _WATCHERS (whose watchers hold threads) never travels."""
    watcher = _WATCHERS.get(key)
    if watcher is not None:
        watcher.progress()


def _say(line: str) -> None:
    progress_lines.say(line)  # print, or above the bars where a terminal shows them


def _trial_error(trial) -> str:
    """The real cause of a failed trial, one line (e.g. the NCCL error of a Train worker), from the
    exception Tune pickled next to the trial, else the last line of its error text."""
    import cloudpickle

    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as fh:
                return ray_workers.root_cause(cloudpickle.load(fh))
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [line for line in open(trial.error_file).read().splitlines() if line.strip()]
            return lines[-1].strip() if lines else "trial failed"
    except Exception as exc:  # an unreadable error must not hide that the trial failed
        return f"trial failed (its error could not be read: {type(exc).__name__})"
    return "trial failed"


@dataclass
class _TrialRows:
    tables: dict[str, list[pd.DataFrame]] = dataclasses.field(default_factory=dict)  # table -> reports
    wall_time_s: float = float("nan")
    last_step: dict = dataclasses.field(default_factory=dict)  # the latest per-step metrics (a stopped trial's row)
    said_at: float = 0.0  # when its last epoch line was printed

    def frame(self, table: str) -> pd.DataFrame | None:
        frames = [f for f in self.tables.get(table, []) if len(f.columns)]
        return pd.concat(frames, ignore_index=True) if frames else None


def run_experiment(
    exp: Experiment,
    workload: Workload,
    store: ResultStore,
    run_id: str,
    done_before: pd.DataFrame | None = None,
    fresh: bool = False,
    storage: str | None = None,
    progress: Callable[[str], None] | None = None,
    joined: bool = False,
    trackers: list[str] = (),
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Run every trial of `exp` except those in `done_before` (the caller's store.finished rows; none
    with `fresh`); write rows as they arrive; return this run's trial rows and the kept ones."""
    ray_session.quiet_ray()  # before ray.tune is imported (also for callers that started Ray themselves)
    from ray import tune

    progress = progress or _say  # never `print` itself: Tune pickles the callbacks (closures over it), and
    # Ray may replace builtins.print (tqdm_ray), after which the original no longer pickles by reference
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our tables replace Tune's logs
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0: no boxes
    # Ctrl-C raises KeyboardInterrupt at once (the CLI stops Ray and exits 130) instead of Tune's
    # graceful stop, after which fit() returns as if done and the next study would start
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # a scheduler's metric (e.g. ASHA's val_rsum) is in the per-epoch reports only, not in the final ones
    # (the trial's row, CLIP's prompts): Tune would fail the trial on those
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # ...so the ResultGrid that fit() returns finds no result files: it says so per trial; we never read it
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    done_before = pd.DataFrame() if done_before is None or fresh else done_before
    skip = set(done_before["trial_key"]) if len(done_before) else set()
    points = list(zip(exp.trial_points(), exp.trial_names()))
    pending = [(o, c, n) for (o, c), n in points if trial_key(c) not in skip]  # (sweep values, config, name)
    params, configs, names = ([p[i] for p in pending] for i in range(3))
    if skip:
        progress(f"[{exp.study}] {len(points) - len(configs)}/{len(points)} trials already finished: "
                 f"kept{'' if configs else ', nothing to run'} (--fresh reruns them)")
    if not configs:
        return done_before
    keys = [trial_key(c) for c in configs]
    # a trial's files, Train run and artifacts are named by its config digest, so that a rerun of an
    # interrupted run finds them (Train V2 resumes a run from its storage by name: train_run_names);
    # --fresh starts anew
    bases = [f"{key}-{run_id}" if fresh else key for key in keys]
    rows = {i: _TrialRows() for i in range(len(configs))}
    run_key = f"{exp.study}-{run_id}"  # names this run's watcher, bar and failure (module dicts: see _progress)
    epochs = [int(getattr(c, "epochs", 0) or 0) if workload.step_key else 0 for c in configs]  # 0: no epochs
    written: list[pd.DataFrame] = []

    version = code_version()

    def schema(table: str):  # every part of a table gets its whole schema (schemas.py)
        return schemas.table_schema(table, workload.columns.get(table, {}), configs[0], workload.row_exclude)

    def ids(index: int, trial_id: str) -> dict:
        # attempt: the name of the trial's files (its key; key-run_id under --fresh): the steps of a
        # trial row are the steps of its attempt, across the runs that resumed it
        return {"run_id": run_id, "study": exp.study, "trial_id": trial_id, "trial_key": keys[index],
                "trial_name": names[index], "attempt": bases[index], "code_version": version}

    def on_result(index: int, metrics: dict, table: str, result: dict, trial_id: str) -> None:
        frame = report_frame(metrics)
        rows[index].wall_time_s = float(result.get("time_total_s", float("nan")))
        if table == "steps" and workload.step_key in frame and len(frame) == 1:
            # one file per (trial, step): a step reported again (a retried epoch) replaces its file;
            # a replayed one (see ray_workers._TrainRuntime.restore) only fills in a missing file
            step = int(frame[workload.step_key].iloc[0])
            if result.get(REPLAY_KEY) and store.exists(exp.study, "steps", f"{bases[index]}-{step:06d}"):
                return
            store.write(exp.study, "steps", f"{bases[index]}-{step:06d}", frame.assign(**ids(index, trial_id)),
                        schema("steps"))
            rows[index].last_step = frame.iloc[0].to_dict()
            bar = progress_lines.for_run(run_key)
            if bar is not None:
                bar.step(index, step)
                progress_lines.close_steps(f"[{exp.study}] {names[index]}: ")  # its steps within that epoch are over
            shown = {k: frame[k].iloc[0] for k in (workload.metric, *(workload.early_stop or ())[:1], "loss", "loss_d",
                                                   "loss_g") if k in frame}
            total = epochs[index]
            # a line per epoch, at most one per trial every 10 s (CLIP's 40 epochs of cached features take
            # seconds: 360 lines for 9 trials), but always the first, the last and one with a sampled metric
            sampled = workload.metric in frame and frame[workload.metric].notna().iloc[0]
            if not (step in (1, total) or sampled or time.monotonic() - rows[index].said_at >= EPOCH_LINE_EVERY_S):
                return
            rows[index].said_at = time.monotonic()
            seconds = float(frame["epoch_time_s"].iloc[0]) if "epoch_time_s" in frame else float("nan")
            left = f"  (~{seconds * (total - step):.0f} s left)" if total and seconds == seconds and step < total else ""
            progress(f"[{exp.study}] {names[index]} {workload.step_key} {step}{f'/{total}' if total else ''}: "
                     + "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if v == v) + left)
            return
        rows[index].tables.setdefault(table, []).append(frame)

    def on_end(index: int, trial_id: str, status: str, error: str | None) -> None:
        got = rows.pop(index, None) or _TrialRows()
        if status == FINISHED and "trials" not in got.tables:  # ended before its final report:
            if trial_id not in ray_schedulers.EARLY_STOPPED:  # ...stopped by us (a write failed, no nodes came)
                status, error = ABORTED, error or "stopped before its final report (the run was stopped)"
            else:  # ...or by ASHA: its last per-step metrics are its result
                step = got.last_step.get(workload.step_key, "?")
                status, error = STOPPED, f"{EARLY} {exp.scheduler} after {workload.step_key} {step}"
                got.tables["trials"] = [pd.DataFrame([{k: v for k, v in got.last_step.items()
                                                       if k not in (workload.step_key, TABLE_KEY)}])]
        cfg = config_columns(dataclasses.asdict(configs[index]), workload.row_exclude)
        for table in sorted(set(got.tables) - {"trials"}):  # steps and any extra tables, before the trial row
            frame = got.frame(table)
            if frame is not None:
                store.write(exp.study, table, bases[index], frame.assign(**ids(index, trial_id)), schema(table))
        trials = got.frame("trials")
        trials = pd.DataFrame([{}]) if trials is None else trials
        for column, value in cfg.items():
            if column not in trials.columns:
                trials[column] = value
        trials = trials.assign(**ids(index, trial_id), status=status, error=error, wall_time_s=got.wall_time_s)
        store.write(exp.study, "trials", bases[index], trials, schema("trials"))
        written.append(trials)
        bar = progress_lines.for_run(run_key)
        if bar is not None:
            bar.end(index)
            progress_lines.close_steps(f"[{exp.study}] {names[index]}: ")
        done = len(configs) - len(rows)
        tail = f"  error: {error}" if error else ""
        progress(f"[{exp.study}] trial {done}/{len(configs)} {status.lower()}: {names[index]} ({trial_id}, "
                 f"{len(trials)} row{'s' * (len(trials) != 1)}){tail}")

    storage = storage or str((store.root / "_ray").resolve())
    artifact_dirs = [str((store.root / exp.study / "artifacts" / base).resolve()) for base in bases]
    say = lambda line: progress(f"[{exp.study}] {line}")  # noqa: E731
    if workload.distributed:  # the Train studies log TensorBoard (also when a trial runs single-process)
        kept = done_before.drop_duplicates("trial_key") if len(done_before) and "attempt" in done_before else None
        kept_names = {} if kept is None else dict(zip(
            kept["trial_name"].fillna(kept["trial_key"]) if "trial_name" in kept else kept["trial_key"], kept["attempt"]))
        tensorboard_view(store.root / exp.study, run_id, {**kept_names, **dict(zip(names, bases))}, say)
    # the same for every trial (checked in preflight). PBT trials are plain single-process Tune trials with
    # Tune checkpoints, as in Ray's PBT DCGAN example: PBT exploits by restarting a trial from another's
    # checkpoint, which a Tune trial driving a TorchTrainer does not hold (its reports carry the Train
    # checkpoint's path as a metric), so PBT would skip every exploit without an error
    pbt = exp.scheduler == "pbt"
    distributed = workload.runs_distributed(configs[0]) and not pbt
    # read here, in the CLI's process: actors on a cluster do not inherit its environment
    fallback = os.environ.get(CPU_FALLBACK_ENV, "") == "1"
    if distributed:
        trainable = tune.with_resources(
            tune.with_parameters(ray_workers.train_driver, module=workload.module, configs=configs, artifact_dirs=artifact_dirs,
                                 names=train_run_names(storage, names, bases, say), scaling=exp.scaling, storage=storage,
                                 allow_cpu_fallback=fallback),
            {"cpu": 0, DRIVER_RESOURCE: 1},  # the driver only waits on its TorchTrainer's workers
        )
        concurrent = ray_cluster.max_concurrent(exp.scaling, joined, say)
    else:
        need, fits = ray_cluster.single_process_resources(exp.scaling, joined)
        trainable = tune.with_resources(
            tune.with_parameters(ray_workers.function_trial, module=workload.module, configs=configs, artifact_dirs=artifact_dirs,
                                 use_gpu=exp.scaling.use_gpu, allow_cpu_fallback=fallback, checkpoints=pbt),
            {"cpu": need.pop("CPU"), "gpu": need.pop("GPU", 0), **need},
        )
        concurrent = exp.scaling.max_concurrent_trials or fits
    collector_cls, stopper_cls = _collector_classes()
    def on_start(index: int, trial_id: str) -> None:
        where = f"{exp.scaling.num_workers} Train workers" if distributed else "one process"
        progress(f"[{exp.study}] {names[index]}: started ({trial_id}, {where})")

    collector = collector_cls(run_key, on_result, on_end, on_start)
    stopper = stopper_cls(collector.key)
    types = ray_cluster.cluster_node_types(joined)
    watcher = ray_cluster.Watcher(say, exp.scaling.max_wait_s, types[0] if types else None,
                                  on_give_up=lambda reason: _FAILED.setdefault(collector.key, BackendError(f"{exp.study}: {reason}")))
    _WATCHERS[collector.key] = watcher  # by key: Tune pickles its callbacks, and a watcher holds a thread
    tuner = tune.Tuner(
        trainable,
        # each trial's real values (what its sweep set, e.g. {"lr": 0.0002}) with its index into `configs`:
        # Tune's trial configs, results and dashboard show them; the trial applies them (ray_workers.trial_config)
        param_space={"trial": tune.grid_search([{"index": i, **o, **({f: getattr(configs[i], f) for f in workload.pbt}
                                                                     if pbt else {})}
                                                for i, o in enumerate(params)])},
        tune_config=tune.TuneConfig(
            reuse_actors=not distributed,
            max_concurrent_trials=concurrent,
            scheduler=ray_schedulers.build(exp, workload, configs),
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: names[trial.config["trial"]["index"]],  # e.g. gan-lr=0.0002,beta1=0.5
        ),
        run_config=tune.RunConfig(
            name=f"{exp.study}-{run_id}",
            storage_path=storage,
            # PBT trials checkpoint every epoch and all are kept: an exploit restores the donor's checkpoint of
            # the moment PBT decided, and the donor may have written (and, with num_to_keep=2, deleted) more
            # by the time the trial restarts (measured: "Could not recover from checkpoint ... anymore")
            callbacks=[collector, *ray_trackers.callbacks(
                list(trackers), exp.study, run_id, store.root, artifact_dirs=artifact_dirs, names=names,
                params=[{**config_columns(dataclasses.asdict(c), workload.row_exclude), "trial_name": n, "trial_key": k}
                        for c, n, k in zip(configs, names, keys)], tracking_uri=tracking_uri,
                step_key=workload.step_key, say=say)],
            stop=stopper,
            verbose=0,
        ),
    )
    started = time.perf_counter()
    try:
        by_epoch = all(epochs)  # the bar counts epochs where every trial has them, else trials
        bar = progress_lines.Bar(run_key, exp.study, epochs if by_epoch else [1] * len(configs),
                                 "epoch" if by_epoch else "trial")
        step = lambda desc, done, total: progress_lines.step(f"[{exp.study}] {desc}", done, total)  # noqa: E731
        with watcher, bar, ProgressTail(say, artifact_dirs, names, step=step):
            tuner.fit()
    finally:
        failure = _FAILED.pop(collector.key, None)
        _WATCHERS.pop(collector.key, None)
    if failure is not None:  # a table write failed, or trials waited past max_wait_s
        raise failure
    progress(f"[{exp.study}] {len(configs)} trial{'s' * (len(configs) != 1)} in {time.perf_counter() - started:.1f}s")
    return pd.concat([done_before, *written], ignore_index=True) if written or len(done_before) else pd.DataFrame()
