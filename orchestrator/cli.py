"""`python -m orchestrator ...`: run studies, list them, report on their results.

`main(argv)` returns an exit code and is what the tests call. Bad input ends in one line on stderr
and exit code 2, before Ray starts and before any result is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
from pathlib import Path

from orchestrator.experiments import EXPERIMENTS, PROFILES, studies
from orchestrator.registry import WORKLOADS
from orchestrator.results import ResultStore, StoreError
from orchestrator.spec import Experiment, SpecError, split_overrides

DEFAULT_RESULTS = "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Reproduce the minimax study at scale on Ray: Tune fans out trials, "
        "every result lands in Parquet tables under --results.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,report}")

    run = sub.add_parser("run", help="run a study (or all of them) and write its tables",
                         description="Run a study, or all, on Ray; results go to <results>/<study>/{trials,steps}.parquet.")
    run.add_argument("study", metavar="STUDY", help=f"one of: {', '.join(studies())}, or 'all'")
    run.add_argument("--profile", choices=PROFILES, default="local",
                     help="local: small embedded default for a laptop (default); paper: the study's full settings")
    run.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR", help="results directory (default: results)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting: FIELD=VALUE for one study, STUDY.FIELD=VALUE under 'all'; "
                     "repeatable; see `list` for the fields")
    run.add_argument("--address", default=None, metavar="ADDR",
                     help="join a running Ray cluster (e.g. auto, or ray://host:10001) instead of starting one")
    run.add_argument("--no-dashboard", action="store_true", help="start local Ray without its dashboard")

    sub.add_parser("list", help="list studies, their profiles and settings",
                   description="List every study, its profiles and every setting --set accepts, with defaults.")

    report = sub.add_parser("report", help="summarise a study's results and write its plots",
                            description="Print a study's summary and write plots next to its tables.")
    report.add_argument("study", metavar="STUDY", help=f"one of: {', '.join(studies())}")
    report.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR", help="results directory (default: results)")
    report.add_argument("--run", dest="run_id", default=None, metavar="RUN_ID", help="which run (default: the latest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "report":
            return _report(args)
        return _run(args)
    except (SpecError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # BackendError and friends: still one line, never a traceback wall
        from orchestrator.ray_backend import BackendError

        if isinstance(exc, BackendError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def resolve(study: str, profile: str, overrides: list[str]) -> list[Experiment]:
    """Names and --set pairs -> validated experiments, in run order."""
    names = studies() if study == "all" else [study]
    if study != "all" and study not in EXPERIMENTS:
        raise SpecError(f"unknown study {study!r}; choose from {', '.join(studies())} or all")
    per_study = split_overrides(overrides, names, all_studies=study == "all")
    return [EXPERIMENTS[name][profile].with_overrides(per_study[name]) for name in names]


def _run(args: argparse.Namespace) -> int:
    from orchestrator import ray_backend

    experiments = resolve(args.study, args.profile, args.overrides)
    store = ResultStore(args.results)
    store.open_for_writing()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    session = ray_backend.start(args.address, dashboard=not args.no_dashboard)
    failed = 0
    try:
        if session.dashboard_url:
            print(f"Ray dashboard: {session.dashboard_url}  (token: `ray get-auth-token`)")
        print(f"run {run_id}: {', '.join(e.study for e in experiments)} ({args.profile}) -> {Path(args.results)}")
        for exp in experiments:
            trials = ray_backend.run_experiment(exp, WORKLOADS[exp.study], store, run_id)
            errors = int((trials.get("status") != "TERMINATED").sum()) if len(trials) else 0
            failed += errors
            print(_summary(exp, trials))
    finally:
        ray_backend.stop(session)
    print(f"run {run_id} finished: tables in {store.root}/<study>/{{trials,steps}}.parquet")
    return 1 if failed else 0


def _summary(exp: Experiment, trials) -> str:
    workload = WORKLOADS[exp.study]
    if not len(trials) or workload.metric not in trials:
        return f"[{exp.study}] no results"
    ok = trials[trials["status"] == "TERMINATED"]
    best = ok[workload.metric].min() if workload.mode == "min" else ok[workload.metric].max()
    return f"[{exp.study}] {len(ok)}/{len(trials)} rows ok; best {workload.metric} = {best:.4g}"


def _list() -> int:
    for name, profiles in EXPERIMENTS.items():
        print(f"{name}")
        for profile, exp in profiles.items():
            print(f"  --profile {profile}: {exp.summary}")
        exp = profiles["local"]
        print("  settings (--set FIELD=VALUE; defaults of the local profile):")
        for obj in (exp.config, exp.scaling):
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
                paper = getattr(profiles["paper"].config if obj is exp.config else profiles["paper"].scaling, f.name)
                diff = f"  (paper: {','.join(map(str, paper)) if isinstance(paper, tuple) else paper})" if paper != value else ""
                print(f"    {name}.{f.name} = {shown if shown != '' else '(empty)'}{diff}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from orchestrator import report

    if args.study not in EXPERIMENTS:
        raise SpecError(f"unknown study {args.study!r}; choose from {', '.join(studies())}")
    store = ResultStore(args.results)
    store.open_for_reading()
    print(report.study_report(args.study, store, args.run_id))
    return 0
