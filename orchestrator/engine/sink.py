"""Where a Tune run's results go: rows into Parquet parts, and progress lines.

`RowSink` holds the run's state (each running trial's rows, the rows written, the failure that stops
the run, the trials ASHA stopped); Tune talks to it through `SinkCallback` (its results) and
`StopOnFailure` (a stopper). Tune pickles callbacks, stoppers and schedulers into its experiment
state (for `Tuner.restore`, which this product never uses: resume goes by trial keys): their pickled
copies drop the sink and are inert, so nothing of the run has to live in module globals.

Epoch rows of trials that report steps are written as they arrive (one part per trial and epoch),
the other tables and the trial row when the trial ends: an interrupted run keeps every finished
trial and every finished epoch. Import this module after `session.quiet_ray()` (it imports ray.tune).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from ray import tune

from orchestrator import progress as progress_lines
from orchestrator.engine.actors import SCORE_KEY, root_cause
from orchestrator.engine.metrics import STATE_OF, StudyMetrics
from orchestrator.engine.plan import TrialPlan
from orchestrator.results.store import ABORTED, EARLY, FINISHED, STOPPED, ResultStore, StoreError, report_frame
from orchestrator.studies.spec import defaults_key
from workloads.runtime import NO_ROW, REPLAY_KEY, RESUMED_FROM_KEY, RESUMED_KEY, TABLE_KEY

EPOCH_LINE_EVERY_S = 10.0  # a trial's epoch lines: at most one per this many seconds (and its first, last, sampled)
TUNE_KEYS = {  # what Tune adds to a result: not ours to store
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "time_since_restore",
    "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name", "node_ip",
    "hostname", "pid", "episodes_total", "timesteps_total", "trial_id", "experiment_tag", "done",
    "should_checkpoint", "__duplicate__", "experiment_id", "checkpoint_path", TABLE_KEY, REPLAY_KEY, RESUMED_KEY,
    RESUMED_FROM_KEY,
}


@dataclass
class _TrialRows:
    """What a running trial has reported, until it ends."""

    tables: dict[str, list[pd.DataFrame]] = dataclasses.field(default_factory=dict)  # table -> reports
    wall_time_s: float = float("nan")
    last_step: dict = dataclasses.field(default_factory=dict)  # the latest per-step metrics (a stopped trial's row)
    said_at: float = 0.0  # when its last epoch line was printed
    # Train runs: the checkpoints saved on a preemption notice that it resumed from (a kill without notice
    # after such a resume resumes from the same one again: one preemption, then a failure)
    preempted_from: set = dataclasses.field(default_factory=set)
    failures: int = 0  # single-process trials: attempts Tune retried
    restarts: int = 0  # Train runs: restores from a checkpoint (their replayed rows)
    node_types: set = dataclasses.field(default_factory=set)  # node types its reports came from

    def frame(self, table: str) -> pd.DataFrame | None:
        frames = [f for f in self.tables.get(table, []) if len(f.columns)]
        return pd.concat(frames, ignore_index=True) if frames else None


class RowSink:
    """Turns one Tune run's results into rows and writes them (driver side)."""

    def __init__(self, plan: TrialPlan, store: ResultStore, say: Callable[[str], None]) -> None:
        self.plan, self.store, self.say = plan, store, say
        self.running = {i: _TrialRows() for i in range(len(plan.configs))}
        self._written: list[tuple[pd.DataFrame, dict]] = []  # trial rows written, and their constant columns
        self._live: set[int] = set()  # trials started and not ended (progress.Tail polls their files)
        self._fresh: list[int] = []  # trials started since the last polling() call
        self._live_lock = threading.Lock()  # guards _live and _fresh
        self.failure: Exception | None = None  # a write that failed, or a wait given up: the run stops
        self.early_stopped: set[str] = set()  # trial ids the scheduler stopped (STOPPED rows, not ABORTED)
        self.watcher = None  # waiting.Watcher, told that trials move
        self.metrics = StudyMetrics(plan.study, plan.run_id, say)  # live metrics (metrics.py)
        self.states = ["pending"] * len(plan.configs)  # each trial's state, for the metrics...
        self.counts = collections.Counter(self.states)  # ...and how many are in each (O(1) a move)
        self.metrics.states(self.counts)
        self.metrics.waited(0.0)
        workload = plan.workload
        self.step_metrics = tuple(dict.fromkeys(m for m in (workload.metric, *(workload.selection or ())[:1],
                                                            *(workload.early_stop or ())[:1]) if m))

    def _moved(self, index: int, state: str) -> None:
        self.counts[self.states[index]] -= 1
        self.counts[state] += 1
        self.states[index] = state
        self.metrics.states(self.counts)

    def _restarts(self, index: int, rows: _TrialRows) -> None:
        self.metrics.restarts(self.plan.names[index], len(rows.preempted_from), rows.restarts + rows.failures)

    def stopped(self) -> None:
        """The run is over: a trial still pending or running (a failed write, a wait given up, Ctrl-C:
        Tune's callbacks stop) ends as aborted in the metrics, as its row will be rerun."""
        self.states = [("aborted" if state in ("pending", "running") else state) for state in self.states]
        self.counts = collections.Counter(self.states)
        self.metrics.states(self.counts)

    def fail(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc

    def polling(self) -> list[int]:
        """The trials whose progress files may hold news: running ones, and any started since the last
        call (a trial of a second starts and ends between two polls)."""
        with self._live_lock:  # Tune's callback thread adds to both while the tail's thread reads them
            fresh, self._fresh = self._fresh, []
            return [*fresh, *self._live]

    def started(self, index: int, trial_id: str) -> None:
        where = f"{self.plan.exp.scaling.num_workers} Train workers" if self.plan.distributed else "one process"
        self._moved(index, "running")
        rows = self.running.setdefault(index, _TrialRows())
        with self._live_lock:
            self._live.add(index)
            self._fresh.append(index)
        self._restarts(index, rows)
        self.say(f"[{self.plan.study}] {self.plan.names[index]}: started ({trial_id}, {where})")

    def result(self, index: int, trial_id: str, result: dict) -> None:
        if self.watcher is not None:
            self.watcher.progress()
        rows = self.running.setdefault(index, _TrialRows())
        if result.get("node_type"):
            rows.node_types.add(result["node_type"])
        if result.get(RESUMED_KEY):  # a Train run restored from a checkpoint (actors._TrainRuntime.restore)
            rows.restarts += 1
            if result[RESUMED_KEY] == "preemption":
                rows.preempted_from.add(result.get(RESUMED_FROM_KEY, rows.restarts))
            self._restarts(index, rows)
        if result.get(TABLE_KEY) == NO_ROW:  # a checkpoint saved on a preemption notice, a resume: no row
            return
        frame = report_frame({k: v for k, v in result.items() if k not in TUNE_KEYS})
        rows.wall_time_s = float(result.get("time_total_s", float("nan")))
        step_key = self.plan.workload.step_key
        if result.get(TABLE_KEY, "steps") == "steps" and step_key in frame and len(frame) == 1:
            self._step(index, trial_id, frame, int(frame[step_key].iloc[0]), bool(result.get(REPLAY_KEY)))
        else:
            rows.tables.setdefault(result.get(TABLE_KEY, "steps"), []).append(frame)

    def recovered(self, index: int, trial_id: str) -> None:
        """A failed single-process trial that Tune runs again: what it reported goes (its steps were
        written per step, and will be written again over themselves), the failure is counted."""
        rows = self.running.setdefault(index, _TrialRows())
        rows.tables.clear()
        rows.failures += 1
        self._restarts(index, rows)
        self.say(f"[{self.plan.study}] {self.plan.names[index]}: failed, retried ({trial_id}, retry {rows.failures} of "
                 f"{self.plan.exp.scaling.max_failures})")

    def _step(self, index: int, trial_id: str, frame: pd.DataFrame, step: int, replayed: bool) -> None:
        """One part per (trial, step): a step reported again (a retried epoch) replaces its part; a
        replayed one (actors._TrainRuntime.restore) only fills in a missing part."""
        part = f"{self.plan.attempts[index]}-{step:06d}"
        if replayed and self.store.exists(self.plan.study, "steps", part):
            return
        self.store.write(self.plan.study, "steps", part, frame.assign(**self.plan.ids(index, trial_id)),
                         self.plan.schema("steps"))
        self.running[index].last_step = frame.iloc[0].to_dict()
        self.metrics.step(self.plan.names[index], step, self.plan.epochs(index), self.running[index].last_step,
                          self.step_metrics)
        bar = progress_lines.for_run(self.plan.run_key)
        if bar is not None:
            bar.step(index, step)
            progress_lines.close_steps(f"[{self.plan.study}] {self.plan.names[index]}: ")  # its steps in that epoch are over
        self._epoch_line(index, frame, step)

    def _epoch_line(self, index: int, frame: pd.DataFrame, step: int) -> None:
        """A line per epoch, at most one per trial every 10 s (CLIP's 40 epochs of cached features take
        seconds: 360 lines for 9 trials), but always the first, the last and one with a sampled metric."""
        workload, total, rows = self.plan.workload, self.plan.epochs(index), self.running[index]
        sampled = workload.metric in frame and frame[workload.metric].notna().iloc[0]
        if not (step in (1, total) or sampled or time.monotonic() - rows.said_at >= EPOCH_LINE_EVERY_S):
            return
        rows.said_at = time.monotonic()
        shown = {k: frame[k].iloc[0] for k in (workload.metric, *(workload.early_stop or ())[:1], "loss", "loss_d",
                                               "loss_g") if k in frame}
        seconds = float(frame["epoch_time_s"].iloc[0]) if "epoch_time_s" in frame else float("nan")
        left = f"  (~{seconds * (total - step):.0f} s left)" if total and seconds == seconds and step < total else ""
        self.say(f"[{self.plan.study}] {self.plan.names[index]} {workload.step_key} {step}{f'/{total}' if total else ''}: "
                 + "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if v == v) + left)

    def ended(self, index: int, trial_id: str, status: str, error: str | None) -> None:
        """A trial ended: its extra tables, then its row (the row last: a trial with a row is complete)."""
        plan, rows = self.plan, self.running.pop(index, None) or _TrialRows()
        with self._live_lock:
            self._live.discard(index)
        if status == FINISHED and "trials" not in rows.tables:
            status, error = self._ended_early(rows, trial_id, error)
        for table in sorted(set(rows.tables) - {"trials"}):  # steps and any extra tables, before the trial row
            frame = rows.frame(table)
            if frame is not None:
                self.store.write(plan.study, table, plan.attempts[index], frame, plan.schema(table),
                                 constants=plan.ids(index, trial_id))
        trial = rows.frame("trials")
        trial = pd.DataFrame([{}]) if trial is None else trial
        cpus, gpus = plan.held()
        constants = {**{k: v for k, v in plan.config_columns(index).items() if k not in trial.columns},
                     **plan.ids(index, trial_id), "status": status, "error": error, "wall_time_s": rows.wall_time_s,
                     "node_types": ",".join(sorted(rows.node_types)), "preemptions": len(rows.preempted_from),
                     "restarts": rows.restarts + rows.failures, "cpu_seconds": rows.wall_time_s * cpus,
                     "gpu_seconds": rows.wall_time_s * gpus, "defaults_key": defaults_key(plan.configs[index])}
        self.store.write(plan.study, "trials", plan.row_part(index), trial, plan.schema("trials"), constants=constants)
        self._written.append((trial, constants))
        self._ended_metrics(index, trial, status)
        bar = progress_lines.for_run(plan.run_key)
        if bar is not None:
            bar.end(index)
            progress_lines.close_steps(f"[{plan.study}] {plan.names[index]}: ")
        done = len(plan.configs) - len(self.running)
        self.say(f"[{plan.study}] trial {done}/{len(plan.configs)} {status.lower()}: {plan.names[index]} ({trial_id}, "
                 f"{len(trial)} row{'s' * (len(trial) != 1)}){f'  error: {error}' if error else ''}")

    def written(self) -> pd.DataFrame:
        """The trial rows written, with their constant columns: one frame, built once after the run (a
        pandas column a trial cost its write more than its rows). A constant replaces its trial's own
        column of that name only (config columns are constants only for rows that lack them)."""
        if not self._written:
            return pd.DataFrame()
        frames, constants = zip(*self._written)
        rows = pd.concat(frames, ignore_index=True)
        owner = np.repeat(np.arange(len(frames)), [len(f) for f in frames])  # row -> its trial
        extra = pd.DataFrame(list(constants)).iloc[owner].reset_index(drop=True)
        for column in extra.columns:
            given = np.array([column in c for c in constants])[owner]
            rows[column] = extra[column].where(given, rows[column]) if column in rows else extra[column]
        return rows

    def _ended_metrics(self, index: int, trial: pd.DataFrame, status: str) -> None:
        """Its state, and its result: the count of its rows' `headline_count` (minimax: lanes that
        reached the saddle), else its row's metrics. Never raises: the row is written already."""
        counted = self.plan.workload.headline_count
        try:
            if counted and counted in trial:
                self.metrics.metric(self.plan.names[index], counted, int(trial[counted].fillna(False).astype(bool).sum()))
            elif len(trial) == 1:
                for name in self.step_metrics:
                    self.metrics.metric(self.plan.names[index], name, trial[name].iloc[0] if name in trial else None)
        except (KeyError, TypeError, ValueError):  # a row without the expected columns: no metric, same row
            pass
        self._moved(index, STATE_OF.get(status, "failed"))

    def _ended_early(self, rows: _TrialRows, trial_id: str, error: str | None) -> tuple[str, str]:
        """A trial that ended before its final report: stopped by the scheduler (its last per-step
        metrics are its result), or by us (a write failed, no nodes came): to be run again."""
        if trial_id not in self.early_stopped:
            return ABORTED, error or "stopped before its final report (the run was stopped)"
        step_key = self.plan.workload.step_key
        rows.tables["trials"] = [pd.DataFrame([{k: v for k, v in rows.last_step.items() if k not in (step_key, TABLE_KEY)}])]
        return STOPPED, f"{EARLY} {self.plan.exp.scheduler} after {step_key} {rows.last_step.get(step_key, '?')}"


class _Inert:
    """Pickles without what it points to (see the module's docstring)."""

    _dropped: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        return {k: (None if k in self._dropped else v) for k, v in self.__dict__.items()}


class SinkCallback(_Inert, tune.Callback):
    """Tune's events -> the sink. A write that fails (disk full, read-only) is kept as the sink's
    failure rather than raised (Tune would wrap it in a traceback): StopOnFailure then ends the run,
    and run_experiment raises it as one line."""

    _dropped = ("sink",)

    def __init__(self, sink: RowSink) -> None:
        self.sink = sink

    def _guard(self, fn: Callable, trial, *args) -> None:
        if self.sink is not None and self.sink.failure is None:
            try:
                fn(trial.config["trial"]["index"], trial.trial_id, *args)
            except StoreError as exc:
                self.sink.fail(exc)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard(self.sink.started, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # ranks Train's checkpoints (there, in the worker's report): no table column, no tracker metric
        result.pop(SCORE_KEY, None)
        self._guard(self.sink.result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guard(self.sink.ended, trial, FINISHED, None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._guard(self.sink.recovered, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(self.sink.ended, trial, "ERROR", trial_error(trial))


class RowsOut(tune.Callback):
    """Last of the run's callbacks: a result's columns (a table's rows, one value per row) leave it
    once the sink and the trackers have them; the scalars (a step's metrics) stay for Tune's
    schedulers, loggers and dashboard. Tune keeps each trial's last result in every experiment
    snapshot (trial.last_result, cloudpickled): with minimax's final report (128 lanes x ~20 columns)
    those snapshots were most of a 785-trial study's driver time."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for key in [k for k, v in result.items() if isinstance(v, (list, tuple, np.ndarray))]:
            del result[key]  # Tune lets callbacks change a result in place (TuneController._process_trial_result)


class StopOnFailure(_Inert, tune.stopper.Stopper):
    """Stops every trial once the sink has failed (a write, or the wait for nodes)."""

    _dropped = ("sink",)

    def __init__(self, sink: RowSink) -> None:
        self.sink = sink

    def __call__(self, trial_id, result) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        return self.sink is not None and self.sink.failure is not None


def trial_error(trial) -> str:
    """The real cause of a failed trial, one line (e.g. the NCCL error of a Train worker), from the
    exception Tune pickled next to the trial, else the last line of its error text."""
    import cloudpickle

    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as fh:
                return root_cause(cloudpickle.load(fh))
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [line for line in open(trial.error_file).read().splitlines() if line.strip()]
            return lines[-1].strip() if lines else "trial failed"
    except Exception as exc:  # an unreadable error must not hide that the trial failed
        return f"trial failed (its error could not be read: {type(exc).__name__})"
    return "trial failed"
