"""`python -m orchestrator ...`: dispatch a command and turn its errors into one line and an exit
code (`run` is in run.py, its options in args.py, `list` in listing.py).

`main(argv)` returns an exit code and is what the tests call. Bad input ends in one line on stderr
and exit code 2, before Ray starts and before any result is touched.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from orchestrator.cli import interrupts
from orchestrator.cli.args import build_parser
from orchestrator.cli.interrupts import INTERRUPTED
from orchestrator.cli.listing import list_studies
from orchestrator.results.store import ResultStore, StoreError
from orchestrator.studies.experiments import EXPERIMENTS, studies
from orchestrator.studies.spec import SpecError

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
        if args.command == "clean":
            from orchestrator.cli.clean import clean

            return clean(args)
        if args.command == "validate-cluster":
            from orchestrator.clusters import kuberay
            from orchestrator.clusters.aws import placeholders, validate_cluster

            if kuberay.ray_resource(kuberay.load(args.file)) is not None:  # cluster-k8s.yaml
                return _validate_kuberay(args.file, args.crds)
            raw = validate_cluster(args.file)
            print(f"{args.file}: valid ({len(raw.get('available_node_types', {}))} node types, head {raw['head_node_type']})")
            if placeholders(raw):
                print(f"  before `ray up`, replace: {', '.join(placeholders(raw))} (see the file's header)")
            return 0
        from orchestrator.cli.run import run

        return run(args)
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
        from orchestrator.engine.session import BackendError

        if isinstance(exc, BackendError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def _report(args: argparse.Namespace) -> int:
    from orchestrator.reports import study as report

    store = ResultStore(args.results)
    if args.study is None:
        from orchestrator.reports.html import write_html

        store.open_for_reading()
        print(f"wrote {write_html(store, args.run_id)}")
        return 0
    if args.study not in EXPERIMENTS:
        raise SpecError(f"unknown study {args.study!r}; choose from {', '.join(studies())}")
    store.open_for_reading()
    print(report.study_report(args.study, store, args.run_id)[0])  # (text, images, rows)
    return 0


def _validate_kuberay(path: str, crds: str | None) -> int:
    """A KubeRay manifest: the operator's rules (and the CRDs' schemas with --crds), then whether its
    groups can hold every trial of the paper profile."""
    from orchestrator.clusters import kuberay
    from orchestrator.studies import resolve

    doc = kuberay.validate(path, crds)
    types, max_workers = kuberay.node_types(doc)
    print(f"{path}: valid {doc['kind']} ({', '.join(t.name for t in types)}; "
          f"{'and the CRDs in ' + crds if crds else 'schemas not checked: --crds DIR'})")
    fits = True
    for exp in resolve("all", "paper", [], say=lambda _: None):
        holds = kuberay.holds(types, max_workers, exp.scaling)
        fits &= "no group holds" not in holds
        print(f"  {exp.study} (paper): {holds}")
    left = kuberay.placeholders(Path(path).read_text())
    if left:
        print(f"  before applying, replace: {', '.join(left)} (see the file's header)")
    if not fits:
        raise SpecError(f"{path}: a study of the paper profile fits no group (above)")
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
