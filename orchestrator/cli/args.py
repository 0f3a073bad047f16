"""The CLI's surface: every command and option of `python -m orchestrator`, with its help text
(`--help` and the README are the user's map: keep them true)."""

from __future__ import annotations

import argparse
import os

from orchestrator.engine import trackers
from orchestrator.studies.experiments import PROFILES, studies
from orchestrator.studies.spec import SCHEDULERS

RESULTS_ENV = "ORCHESTRATOR_RESULTS"  # the default results directory (cluster.yaml: the shared storage)
def default_results() -> str:
    """--results when not given: $ORCHESTRATOR_RESULTS, else results (read when the CLI parses)."""
    return os.environ.get(RESULTS_ENV) or "results"



class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to look), not the usage block and the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m orchestrator",
        description="Reproduce the minimax / GAN / CLIP study at scale on Ray: Tune fans out trials, Train runs "
        "DDP, every result lands in Parquet tables under --results.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,report,clean,generate,validate-cluster}")

    _add_run(sub)
    sub.add_parser("list", help="list studies, their profiles and settings",
                   description="List every study, its profiles and every setting --set accepts, with defaults.")
    _add_report(sub)
    _add_generate(sub)
    _add_clean(sub)
    check = sub.add_parser("validate-cluster", help="check a `ray up` cluster config offline",
                           description="Validate a cluster config with Ray's own schema and preparation steps "
                           "(no credentials, no network), and this project's rules (only SSH open).")
    check.add_argument("file", nargs="?", default="cluster.yaml",
                       help="default: cluster.yaml; a KubeRay manifest (cluster-k8s.yaml) is checked as one")
    check.add_argument("--crds", default=None, metavar="DIR",
                       help="KubeRay manifests: also check against the CRDs in DIR (ray.io_rayjobs.yaml, "
                            "ray.io_rayclusters.yaml), unknown fields as errors")
    return parser


def _results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=default_results(), metavar="DIR",
                        help=f"results directory (default: ${RESULTS_ENV}, else results; now: {default_results()})")


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run a study (or all of them) and write its tables",
                         description="Run a study, or all, on Ray; results go to <results>/<study>/{trials,steps}.parquet.")
    run.add_argument("study", metavar="STUDY", help=f"one of: {', '.join(studies())}, or 'all'")
    run.add_argument("--profile", choices=PROFILES, default="local",
                     help="local: small embedded default for a laptop (default); paper: the study's full settings")
    _results_option(run)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting: FIELD=VALUE for one study, STUDY.FIELD=VALUE under 'all'; "
                     "repeatable; see `list` for the fields")
    run.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="FIELD=V1,V2,...",
                     help="sweep a config field (STUDY.FIELD under 'all'); repeatable: a grid over the product of "
                     "FIELD=V1,V2,... axes, times --samples draws of FIELD=loguniform(A,B) / uniform(A,B) / "
                     "choice(A,B,...) axes; replaces the profile's own sweep")
    run.add_argument("--samples", type=int, default=None, metavar="N",
                     help="random search: N draws of the random --sweep axes per grid point (drawn once, seeded, "
                     "before Ray starts: the same command resumes the same trials)")
    run.add_argument("--sample-seed", type=int, default=0, metavar="S",
                     help="seed of those draws (default 0); another S draws other trials")
    run.add_argument("--scheduler", choices=SCHEDULERS, default="fifo",
                     help="fifo: every trial runs to its end (default); asha: Tune's ASHA stops trials whose "
                     "per-epoch metric (GAN: FID at the sample epochs; CLIP: val rsum) trails the others' at the "
                     "same epoch: rows with status STOPPED, kept when an ASHA run resumes; pbt (GAN): population based training, "
                     "at each sample epoch the worst trials copy the best's weights and perturb its lr")
    run.add_argument("--tracker", dest="trackers", action="append", default=[], choices=trackers.TRACKERS,
                     help="also log every trial to an experiment tracker (repeatable): mlflow (params, per-epoch "
                     "metrics, image artifacts; default store <results>/mlruns) or wandb (offline unless $WANDB_MODE "
                     "says otherwise; `wandb sync` later); each needs its extra, e.g. pip install -e .[mlflow]")
    run.add_argument("--tracking-uri", default=None, metavar="URI",
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a file store <results>/mlruns)")
    run.add_argument("--seeds", type=int, default=None, metavar="N",
                     help="run every configuration with N seeds (seed, seed+1, ...); `report` shows mean ± std over "
                     "them (default: the profile's; local CLIP: 3)")
    run.add_argument("--address", default=None, metavar="ADDR",
                     help="join a running Ray cluster (auto, or HOST:PORT of its GCS) instead of starting one; default: "
                     "$RAY_ADDRESS (set inside a Ray job), else a local Ray. ray:// (Ray Client) is refused: "
                     "submit with `ray job submit` instead")
    run.add_argument("--data-dir", default=None, metavar="DIR",
                     help="folder holding FashionMNIST/ and flickr8k/; default: $ORCHESTRATOR_DATA_DIR, "
                     "else download where possible")
    run.add_argument("--storage", default=None, metavar="URI",
                     help="where Ray keeps checkpoints (a path every node reaches, or s3://BUCKET/prefix); "
                     "default: <results>/_ray")
    run.add_argument("--fresh", action="store_true",
                     help="rerun every trial; default: trials finished in an earlier run (same config) are kept "
                     "and interrupted ones resume from their last checkpoint")
    run.add_argument("--no-dashboard", action="store_true", help="start local Ray without its dashboard")


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="summarise results: one study in the terminal, or all as HTML",
                            description="With a STUDY: print its summary and write its plots next to its tables. "
                            "Without: write <results>/report.html, one self-contained page for every study.")
    report.add_argument("study", metavar="STUDY", nargs="?", default=None,
                        help=f"one of: {', '.join(studies())} (default: all, as HTML)")
    _results_option(report)
    report.add_argument("--run", dest="run_id", default=None, metavar="RUN_ID", help="which run (default: the latest)")


def _add_clean(sub) -> None:
    clean = sub.add_parser("clean", help="free checkpoints and temporary files that finished trials no longer need",
                           description="List (default) or delete (--yes) what finished work no longer needs: Train "
                           "checkpoints of trials that ran to their end, Tune folders of past runs, writers' "
                           "temporaries. Unfinished trials' checkpoints, tables and artifacts are kept.")
    _results_option(clean)
    clean.add_argument("--storage", default=None, metavar="DIR",
                       help="Ray's storage, as given to `run --storage` (default: <results>/_ray)")
    clean.add_argument("--yes", action="store_true", help="delete them (default: only say what would be freed)")


def _add_generate(sub) -> None:
    generate = sub.add_parser("generate", help="write a grid of new samples from a trained GAN generator",
                              description="Sample a trained generator into a PNG grid.")
    generate.add_argument("study", metavar="STUDY", choices=["gan"], help="gan")
    generate.add_argument("--checkpoint", default=None, metavar="PATH",
                          help="generator.pt, or a checkpoint directory/file holding one "
                          "(default: the latest finished trial under --results)")
    generate.add_argument("--n", type=int, default=64, help="number of samples (default: 64, an 8x8 grid)")
    generate.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    generate.add_argument("--out", default=None, metavar="FILE", help="PNG to write (default: <results>/gan/generated.png)")
    _results_option(generate)
