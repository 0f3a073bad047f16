"""Run one experiment as one Tune run and return its trial rows (driver side).

The steps, each its own piece: plan the pending trials (plan.py); build the trainable and what it
asks of the cluster (trainable.py); run the tuner with a sink that turns results into rows and
Parquet parts (sink.py), while a watcher says what waiting trials wait for (capacity.py); return
this run's rows with the kept ones. Like Optuna's `_optimize`, the state lives on objects (the plan,
the sink), not in closures or module globals.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import pandas as pd
import pyarrow as pa

from orchestrator import progress as progress_lines
from orchestrator.engine import capacity, schedulers, session, trackers as tracker_callbacks, waiting
from orchestrator.engine import trainable as trainables
from orchestrator.engine.plan import TrialPlan, trial_dirname, trial_name
from orchestrator.engine.session import BackendError
from orchestrator.results.store import FINISHED, ResultStore
from orchestrator.studies.registry import Workload
from orchestrator.studies.spec import Experiment


def run_experiment(
    exp: Experiment,
    workload: Workload,
    store: ResultStore,
    run_id: str,
    done_before: pd.DataFrame | None = None,
    again: frozenset[str] = frozenset(),
    fresh: bool = False,
    storage: str | None = None,
    progress: Callable[[str], None] | None = None,
    joined: bool = False,
    trackers: list[str] = (),
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Run every trial of `exp` except those in `done_before` (the caller's kept rows; none with
    `fresh`), those whose keys are in `again` as new attempts (cli/kept.py); write rows as they arrive;
    return this run's trial rows and the kept ones."""
    # never `print` itself: Tune pickles callbacks, and Ray may replace builtins.print (tqdm_ray), after
    # which the original no longer pickles by reference
    say = progress or progress_lines.say
    plan = TrialPlan.make(exp, workload, store, run_id, done_before, fresh, storage, again)
    if len(plan.kept):
        say(f"[{exp.study}] {plan.total - len(plan.configs)}/{plan.total} trials already finished: "
            f"kept{'' if plan.configs else ', nothing to run'} (--fresh reruns them)")
    if not plan.configs:
        return plan.kept
    started = time.perf_counter()
    written = _fit(plan, store, say, joined, list(trackers), tracking_uri)
    say(f"[{exp.study}] {len(plan.configs)} trial{'s' * (len(plan.configs) != 1)} in {time.perf_counter() - started:.1f}s")
    _compact(plan, store, written, say)
    return pd.concat([plan.kept, written], ignore_index=True) if len(written) or len(plan.kept) else pd.DataFrame()


def _compact(plan: TrialPlan, store: ResultStore, written: pd.DataFrame, say: Callable[[str], None]) -> None:
    """The parts of the trials this run finished or kept, one per table for this run (results/compact.py).
    Kept ones: those an interrupted earlier run finished before it could compact."""
    compact_rows(store, plan.study, plan.run_id, pd.concat([plan.kept, written], ignore_index=True), say)


def compact_rows(store: ResultStore, study: str, run_id: str, rows: pd.DataFrame, say: Callable[[str], None]) -> None:
    """Compact the parts of the attempts of these rows that ran to their end (TERMINATED: never written
    again). Not STOPPED ones: a later run that takes one on may train an epoch again, writing a part
    under a name the compacted part holds, which readers would skip and finish() delete."""
    if rows.empty or "attempt" not in rows:
        return
    finished = sorted(set(rows.loc[rows["status"] == FINISHED, "attempt"].dropna()))
    try:
        merged = store.compact_run(study, run_id, finished)
    except (OSError, ValueError, pa.ArrowException) as exc:  # the parts stay as they are, each read whole
        say(f"[{study}] tables not compacted ({getattr(exc, 'strerror', None) or exc}); every row is kept")
        return
    if merged:
        say(f"[{study}] tables compacted: {merged} parts of {len(finished)} finished trials -> one per table")


def _fit(plan: TrialPlan, store: ResultStore, say: Callable[[str], None], joined: bool, trackers: list[str],
         tracking_uri: str | None) -> pd.DataFrame:
    """Run the plan's trials on Tune; the trial rows written. Raises the failure that stopped the run
    (a table write, a wait for nodes past max_wait_s) as one line."""
    _quiet_tune()
    from orchestrator.engine.sink import RowSink  # imports ray.tune: after _quiet_tune

    study_say = lambda line: say(f"[{plan.study}] {line}")  # noqa: E731
    if plan.workload.distributed:  # the Train studies log TensorBoard (also when a trial runs single-process)
        plan.tensorboard_view(store.root / plan.study, study_say)
    sink = RowSink(plan, store, say)
    trainable, concurrent = trainables.build(plan, joined, study_say)
    tuner = _tuner(plan, sink, trainable, concurrent, store, trackers, tracking_uri, study_say)
    types = capacity.cluster_node_types(joined)
    sink.watcher = waiting.Watcher(study_say, plan.exp.scaling.max_wait_s, types[0] if types else None,
                                    on_give_up=lambda reason: sink.fail(BackendError(f"{plan.study}: {reason}")),
                                    on_waited=sink.metrics.waited)
    by_epoch = all(plan.epochs(i) for i in range(len(plan.configs)))  # the bar counts epochs where all have them
    bar = progress_lines.Bar(plan.run_key, plan.study,
                             [plan.epochs(i) if by_epoch else 1 for i in range(len(plan.configs))],
                             "epoch" if by_epoch else "trial")
    step = lambda desc, done, total: progress_lines.step(f"[{plan.study}] {desc}", done, total)  # noqa: E731
    try:
        with sink.watcher, bar, progress_lines.Tail(study_say, plan.artifact_dirs, plan.names, step=step,
                                                          active=sink.polling):
            tuner.fit()
    finally:
        sink.stopped()
    if sink.failure is not None:
        raise sink.failure
    return sink.written()


def _tuner(plan: TrialPlan, sink, trainable, concurrent: int | None, store: ResultStore, trackers: list[str],
           tracking_uri: str | None, say: Callable[[str], None]):
    from ray import tune

    from orchestrator.engine.sink import RowsOut, SinkCallback, StopOnFailure

    callbacks = tracker_callbacks.callbacks(
        trackers, plan.study, plan.run_id, store.root, artifact_dirs=plan.artifact_dirs, names=plan.names,
        params=plan.tracker_params(), tracking_uri=tracking_uri, step_key=plan.workload.step_key, say=say)
    return tune.Tuner(
        trainable,
        param_space=plan.param_space(),
        tune_config=tune.TuneConfig(
            reuse_actors=not plan.distributed,
            max_concurrent_trials=concurrent,
            scheduler=schedulers.build(plan.exp, plan.workload, plan.configs, sink.early_stopped),
            trial_dirname_creator=trial_dirname,  # module functions: Tune pickles them into every trial's spec
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=plan.experiment_name,
            storage_path=plan.storage,
            callbacks=[SinkCallback(sink), *callbacks, RowsOut()],
            stop=StopOnFailure(sink),
            # single-process trials (minimax, frozen CLIP, PBT) retried when their process or node dies,
            # from their Tune checkpoint where they have one (PBT); the sink drops what the failed attempt
            # reported (SinkCallback.on_trial_recover), so no row lands twice. A Train trial retries
            # inside Train (actors.train_driver): a retry here would reset its failure budget.
            failure_config=tune.FailureConfig(max_failures=0 if plan.distributed else plan.exp.scaling.max_failures),
            verbose=0,
        ),
    )


def _quiet_tune() -> None:
    """Tune's settings for a run whose tables and lines replace Tune's own output (set before ray.tune
    is imported, which reads some of them)."""
    session.quiet_ray()
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
