"""`python -m orchestrator run`: resolve the studies, take the results directory's lock, keep what
earlier runs finished, check the rest before Ray starts, run each study on Ray, print a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from pathlib import Path

import pandas as pd

from orchestrator import progress
from orchestrator.cli import interrupts
from orchestrator.cli.args import default_results
from orchestrator.cli.kept import kept_rows
from orchestrator.results.provenance import code_version
from orchestrator.results.runlock import LockHeld, RunLock
from orchestrator.results.store import DONE, FINISHED, STOPPED, ResultStore, StoreError
from orchestrator.studies.registry import WORKLOADS
from orchestrator.studies.resolve import preflight, resolve
from orchestrator.studies.spec import Experiment, SpecError


def run(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS") or ""
    if address.startswith("ray://"):
        from orchestrator.engine.session import CLIENT_REFUSED

        raise SpecError(CLIENT_REFUSED)
    experiments = resolve(args.study, args.profile, args.overrides, args.data_dir, args.sweeps, args.seeds,
                          samples=args.samples, sample_seed=args.sample_seed, scheduler=args.scheduler)
    store = ResultStore(args.results)
    store.open_for_writing()
    # UTC: run ids order runs in time (report and resume pick the latest), whatever host started them
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    lock = RunLock(store.root, run_id)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise StoreError(str(exc)) from None
    try:
        store.sweep_temporaries()  # left by runs killed mid-write; we hold the lock, no one else writes
        return _run_locked(args, experiments, store, run_id)
    except BaseException:
        interrupts.stop_ray()  # what this run started of Ray ends before another run may take the lock
        raise
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, experiments: list[Experiment], store: ResultStore, run_id: str) -> int:
    from orchestrator.engine import run as engine
    from orchestrator.engine import session as ray_session
    from orchestrator.engine import trackers

    keys = {e.study: e.trial_keys() for e in experiments}
    # trials ASHA stopped early are results of an ASHA run; another scheduler runs them to their end
    kept = {e.study: (pd.DataFrame(), frozenset()) if args.fresh else kept_rows(store, e, keys[e.study], progress.say)
            for e in experiments}
    done, again = {s: k[0] for s, k in kept.items()}, {s: k[1] for s, k in kept.items()}
    pending = [e for e in experiments if set(keys[e.study]) - set(done[e.study].get("trial_key", ()))]
    if pending:
        preflight(pending, on_cluster=bool(args.address or os.environ.get("RAY_ADDRESS")))  # bad input fails here
        try:
            trackers.check_installed(args.trackers)
        except ImportError as exc:
            raise SpecError(str(exc)) from None

    def record_spec() -> None:  # only once the run can go ahead: `report` shows the latest spec's trials
        store.mark_format()  # a format-2 folder becomes 3 here, once this run writes to it
        for exp in experiments:
            store.write_spec(exp.study, run_id, _spec_frame(exp, keys[exp.study], done[exp.study], run_id, args.profile))
            _say_other_versions(exp.study, done[exp.study])

    if not pending:  # every trial finished in an earlier run: no Ray to start
        record_spec()
        for exp in experiments:  # what a run killed before its end left loose
            engine.compact_rows(store, exp.study, run_id, done[exp.study], progress.say)
        progress.say(f"every trial of {', '.join(e.study for e in experiments)} ({args.profile}) already finished in "
                     f"{store.root}: nothing to run (--fresh reruns them)")
        for exp in experiments:
            study, text = _summary(exp, done[exp.study], 0)
            progress.say(f"  {study:<8} {text}")
        return 0
    local = not (args.address or os.environ.get("RAY_ADDRESS") or ray_session.ray_is_up())
    with interrupts.starting_ray(local):
        session = ray_session.start(args.address, dashboard=not args.no_dashboard)
    record_spec()
    failed, summary = 0, []
    try:
        if session.dashboard_url:
            progress.say(f"Ray dashboard: {session.dashboard_url}  (token: `ray get-auth-token`)")
        progress.say(f"run {run_id}: {', '.join(e.study for e in experiments)} ({args.profile}) -> {Path(args.results)}")
        for exp in experiments:
            started = time.perf_counter()
            trials = engine.run_experiment(exp, WORKLOADS[exp.study], store, run_id, done[exp.study], again[exp.study],
                                                fresh=args.fresh, storage=args.storage, joined=session.joined,
                                                trackers=args.trackers, tracking_uri=args.tracking_uri)
            failed += int((~trials["status"].isin(DONE)).sum()) if len(trials) else 0
            summary.append(_summary(exp, trials, time.perf_counter() - started))
    finally:
        ray_session.stop(session, linger=not interrupts._SIGNALLED)
    width = max(len(line[0]) for line in summary)
    progress.say(f"\nrun {run_id} ({args.profile}):")
    for study, text in summary:
        progress.say(f"  {study:<{width}}  {text}")
    where = "" if str(store.root) == default_results() else f" --results {store.root}"
    progress.say(f"tables: {store.root}/<study>/{{trials,steps}}.parquet   report: python -m orchestrator report{where}")
    return 1 if failed else 0


def _spec_frame(exp: Experiment, keys: list[str], done: pd.DataFrame, run_id: str, profile: str) -> pd.DataFrame:
    """One row per trial of this run's spec (the `runs` table); `stored_key`: the key its kept rows are
    stored under (format 2's, for rows written before format 3), so later runs find them by it."""
    kept = set(done["trial_key"]) if len(done) else set()
    stored = dict(zip(done["trial_key"], done["stored_key"])) if len(done) and "stored_key" in done else {}
    # params: what --set and the sweep set for each trial (random draws included), as JSON: the record
    # of how the run differs from the profile, and of the draws
    params = [json.dumps({**exp.set_values(c, o), **o}, default=str, sort_keys=True) for o, c in exp.trial_points()]
    return pd.DataFrame({"run_id": run_id, "study": exp.study, "profile": profile, "trial_index": range(len(keys)),
                         "trial_key": keys, "trial_name": exp.trial_names(), "params": params, "scheduler": exp.scheduler,
                         "kept": [k in kept for k in keys], "stored_key": [stored.get(k, k) for k in keys],
                         "code_version": code_version(), "started_at": time.time()})


def _say_other_versions(study: str, done: pd.DataFrame) -> None:
    """One line when kept trials were computed by another version of the code."""
    if not len(done):
        return
    versions = done.drop_duplicates("trial_key").get("code_version", pd.Series("unknown", index=done.index))
    other = versions.fillna("unknown")[versions.fillna("unknown") != code_version()]
    if len(other):
        progress.say(f"[{study}] {len(other)} of {done['trial_key'].nunique()} kept trials were computed by another "
                     f"code version ({', '.join(sorted(set(other)))}; this is {code_version()}): --fresh reruns them")


def _best_configuration(workload, ok: pd.DataFrame) -> str:
    """With several seeds: the configuration whose mean selection metric (val) is best, and its reported
    metric's mean ± std over its seeds (what `report` ranks; one seed's value would be a draw)."""
    column, mode = workload.ranked_by
    # the trial's name without its seed (and a collision suffix): its configuration
    configuration = ok["trial_name"].str.replace(r"(,?seed=\d+)|(#\w+$)", "", regex=True).str.rstrip("-,")
    means = ok.groupby(configuration)[column].mean()
    if means.isna().all():
        return "no finished trial"
    best = means.idxmax() if mode == "max" else means.idxmin()
    values = ok.loc[configuration == best, workload.metric]
    name = best.split("-", 1)[1] if "-" in best else "the default"
    spread = f" ± {values.std():.2g} ({len(values)} seeds)" if len(values) > 1 else " (1 seed finished)"
    return f"best by mean {column}: {name}: {workload.metric} = {values.mean():.4g}{spread}"


def _summary(exp: Experiment, trials, seconds: float) -> tuple[str, str]:
    """(study, one line): rows ok, the study's headline (the best value of its metric, or how many rows
    have its headline_count true), time."""
    workload = WORKLOADS[exp.study]
    if not len(trials) or workload.metric not in trials:
        return exp.study, f"no results ({seconds:.0f} s)"
    ok = trials[trials["status"] == FINISHED]
    if workload.headline_count:
        headline = f"{int(ok[workload.headline_count].astype(bool).sum())}/{len(ok)} {workload.headline_count}"
    elif exp.seeds > 1 and len(ok) and "trial_name" in ok:
        headline = _best_configuration(workload, ok)
    else:
        best = workload.best(ok)
        chosen = f" by {workload.selection[0]}" if workload.selection else ""
        headline = "no finished trial" if best is None else f"best trial{chosen}: {workload.metric} = {best[workload.metric]:.4g}"
    stopped = int((trials["status"] == STOPPED).sum())
    early = f" ({stopped} stopped early by {exp.scheduler})" if stopped else ""
    return exp.study, f"{f'{len(ok)}/{len(trials)} rows ok{early}':<20} {headline:<42} {seconds:>5.0f} s"
