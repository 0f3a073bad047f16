"""`python -m orchestrator ...`: run studies, list them, report on their results (the commands and
options are in cli_args.py, `list` in listing.py).

`main(argv)` returns an exit code and is what the tests call. Bad input ends in one line on stderr
and exit code 2, before Ray starts and before any result is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from orchestrator import interrupts, progress, ray_trackers
from orchestrator import sweeps as sweep_grammar
from orchestrator.cli_args import DEFAULT_RESULTS, build_parser
from orchestrator.experiments import EXPERIMENTS, studies
from orchestrator.listing import list_studies
from orchestrator.provenance import code_version
from orchestrator.registry import WORKLOADS
from orchestrator.results import DONE, FINISHED, STOPPED, ResultStore, StoreError
from orchestrator.runlock import LockHeld, RunLock
from orchestrator.interrupts import INTERRUPTED
from orchestrator.spec import Experiment, SpecError, split_overrides, trial_key
from workloads.common import CACHE_ENV, DATA_ENV

DEBUG_ENV = "ORCHESTRATOR_DEBUG"  # "1": unexpected errors show their traceback instead of one line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear live through a pipe or a log file
    with interrupts.handled(args.command == "run" and threading.current_thread() is threading.main_thread()):
        return _dispatch(args)


def _interrupted() -> int:
    interrupts.stop_ray()  # a Ray started by this run, even one interrupted inside ray.init
    print("interrupted: finished trials and epochs are saved; run the same command again to resume", file=sys.stderr)
    return INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "list":
            return list_studies()
        if args.command == "report":
            return _report(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "validate-cluster":
            from orchestrator.cluster import placeholders, validate_cluster

            raw = validate_cluster(args.file)
            print(f"{args.file}: valid ({len(raw.get('available_node_types', {}))} node types, head {raw['head_node_type']})")
            if placeholders(raw):
                print(f"  before `ray up`, replace: {', '.join(placeholders(raw))} (see the file's header)")
            return 0
        return _run(args)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:  # SIGTERM while ray.init had its own handler in place (sys.exit(15))
            return _interrupted()
        raise
    except (SpecError, StoreError, FileNotFoundError) as exc:
        if os.environ.get(DEBUG_ENV) and not isinstance(exc, SpecError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # BackendError and friends: still one line, never a traceback wall
        from orchestrator.ray_session import BackendError

        if isinstance(exc, BackendError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


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
        keys = [trial_key(c) for c in exp.trial_configs()]
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
            if trial_key(config) in seen:
                continue
            seen.add(trial_key(config))
            try:
                WORKLOADS[exp.study].check(config, say=progress.terminal(exp.study))
            except (OSError, ValueError, ImportError) as exc:
                hint = ON_CLUSTER_HINT if on_cluster and isinstance(exc, FileNotFoundError) else ""
                raise SpecError(f"{exp.study}: {str(exc).rstrip('.')}{hint}") from None
            finally:
                progress.close_steps(f"[{exp.study}] ")  # a step cut short by an error stays drawn otherwise


def _run(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS") or ""
    if address.startswith("ray://"):
        from orchestrator.ray_session import CLIENT_REFUSED

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
    from orchestrator import ray_backend, ray_session

    keys = {e.study: [trial_key(c) for c in e.trial_configs()] for e in experiments}
    # trials ASHA stopped early are results of an ASHA run; another scheduler runs them to their end
    done = {e.study: pd.DataFrame() if args.fresh else store.finished(e.study, keys[e.study], e.scheduler == "asha")
            for e in experiments}
    pending = [e for e in experiments if set(keys[e.study]) - set(done[e.study].get("trial_key", ()))]
    if pending:
        preflight(pending, on_cluster=bool(args.address or os.environ.get("RAY_ADDRESS")))  # bad input fails here
        try:
            ray_trackers.check_installed(args.trackers)
        except ImportError as exc:
            raise SpecError(str(exc)) from None

    def record_spec() -> None:  # only once the run can go ahead: `report` shows the latest spec's trials
        for exp in experiments:
            store.write_spec(exp.study, run_id, _spec_frame(exp, keys[exp.study], done[exp.study], run_id, args.profile))
            _say_other_versions(exp.study, done[exp.study])

    if not pending:  # every trial finished in an earlier run: no Ray to start
        record_spec()
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
            trials = ray_backend.run_experiment(exp, WORKLOADS[exp.study], store, run_id, done[exp.study],
                                                fresh=args.fresh, storage=args.storage, joined=session.joined,
                                                trackers=args.trackers, tracking_uri=args.tracking_uri)
            failed += int((~trials["status"].isin(DONE)).sum()) if len(trials) else 0
            summary.append(_summary(exp, trials, time.perf_counter() - started))
    finally:
        ray_session.stop(session)
    width = max(len(line[0]) for line in summary)
    progress.say(f"\nrun {run_id} ({args.profile}):")
    for study, text in summary:
        progress.say(f"  {study:<{width}}  {text}")
    where = "" if str(store.root) == DEFAULT_RESULTS else f" --results {store.root}"
    progress.say(f"tables: {store.root}/<study>/{{trials,steps}}.parquet   report: python -m orchestrator report{where}")
    return 1 if failed else 0


def _spec_frame(exp: Experiment, keys: list[str], done: pd.DataFrame, run_id: str, profile: str) -> pd.DataFrame:
    """One row per trial of this run's spec (the `runs` table)."""
    kept = set(done["trial_key"]) if len(done) else set()
    # params: what the sweep set for each trial (random draws included), as JSON: the record of the draws
    params = [json.dumps(o, default=str, sort_keys=True) for o, _ in exp.trial_points()]
    return pd.DataFrame({"run_id": run_id, "study": exp.study, "profile": profile, "trial_index": range(len(keys)),
                         "trial_key": keys, "trial_name": exp.trial_names(), "params": params, "scheduler": exp.scheduler,
                         "kept": [k in kept for k in keys], "code_version": code_version(), "started_at": time.time()})


def _say_other_versions(study: str, done: pd.DataFrame) -> None:
    """One line when kept trials were computed by another version of the code."""
    if not len(done):
        return
    versions = done.drop_duplicates("trial_key").get("code_version", pd.Series("unknown", index=done.index))
    other = versions.fillna("unknown")[versions.fillna("unknown") != code_version()]
    if len(other):
        progress.say(f"[{study}] {len(other)} of {done['trial_key'].nunique()} kept trials were computed by another "
                     f"code version ({', '.join(sorted(set(other)))}; this is {code_version()}): --fresh reruns them")


def _summary(exp: Experiment, trials, seconds: float) -> tuple[str, str]:
    """(study, one line): rows ok, the study's headline (the best value of its metric, or how many rows
    have its headline_count true), time."""
    workload = WORKLOADS[exp.study]
    if not len(trials) or workload.metric not in trials:
        return exp.study, f"no results ({seconds:.0f} s)"
    ok = trials[trials["status"] == FINISHED]
    if workload.headline_count:
        headline = f"{int(ok[workload.headline_count].astype(bool).sum())}/{len(ok)} {workload.headline_count}"
    else:
        best = ok[workload.metric].min() if workload.mode == "min" else ok[workload.metric].max()
        # one trial's value: `report` gives each configuration's mean ± std over its seeds
        headline = f"best trial's {workload.metric} ({'lowest' if workload.mode == 'min' else 'highest'}) = {best:.4g}"
    stopped = int((trials["status"] == STOPPED).sum())
    early = f" ({stopped} stopped early by {exp.scheduler})" if stopped else ""
    return exp.study, f"{f'{len(ok)}/{len(trials)} rows ok{early}':<20} {headline:<42} {seconds:>5.0f} s"


def _report(args: argparse.Namespace) -> int:
    from orchestrator import report

    store = ResultStore(args.results)
    if args.study is None:
        from orchestrator.html_report import write_html

        store.open_for_reading()
        print(f"wrote {write_html(store, args.run_id)}")
        return 0
    if args.study not in EXPERIMENTS:
        raise SpecError(f"unknown study {args.study!r}; choose from {', '.join(studies())}")
    store.open_for_reading()
    print(report.study_report(args.study, store, args.run_id)[0])  # (text, images, rows)
    return 0


def _generate(args: argparse.Namespace) -> int:
    store = ResultStore(args.results)
    checkpoint = args.checkpoint
    if checkpoint is None:
        store.open_for_reading()
        trials = store.read("gan", "trials")
        done = trials[trials["status"] == "TERMINATED"] if len(trials) else trials
        if done.empty or "generator_path" not in done:
            raise StoreError(f"no finished GAN trial in {store.root}: run `python -m orchestrator run gan` or pass --checkpoint")
        checkpoint = done.sort_values("run_id")["generator_path"].iloc[-1]
    if not Path(checkpoint).exists():
        raise SpecError(f"checkpoint {checkpoint} does not exist")
    if args.n <= 0:
        raise SpecError(f"--n must be > 0, got {args.n}")
    from workloads.gan.generate import write_samples

    out = write_samples(checkpoint, args.out or store.root / "gan" / "generated.png", n=args.n, seed=args.seed)
    print(f"wrote {args.n} samples from {checkpoint} to {out}")
    return 0
