"""Scale (issue 23): costs that must not grow with a results folder's history or a run's length,
measured side by side in one run.

    python bench/bench_scale.py [--runs 100] [--lrs 20000] [--noop-trials 2000] [--skip-ray]

1. A results folder holding `--runs` runs of a synthetic minimax study (real minimax rows, each run
   with its own trial keys, ~1M step rows in all at the default), written by the project's own
   store as runs write them (a part per trial, then compacted at the run's end), against a folder
   holding one such run: the start-of-run lookup of finished trials (cli/kept.py) and `report
   minimax` (study_report: the table and both plots), in seconds, and their ratio (targets: <= 2 s,
   <= 5 s, ratio <= 2).
2. Peak memory (ru_maxrss) of one minimax trial (128 learning rates, one algorithm) at T = 1e6
   steps against T = 1e3, each in a fresh process.
3. Minimax with `--lrs` learning rates x 5 algorithms: `python -m orchestrator run minimax` against a
   bare Ray Tune script running the same trial function (minimax.train_loop) over the same chunks
   with the same concurrency, each a fresh process (target ratio <= 1.3).
4. `--noop-trials` trials that do nothing (minimax, one learning rate, one step, one algorithm)
   through the orchestrator against bare Tune: the per-trial overhead in ms and the ratio.
Ends with one line: `scale: ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, timed

MEMORY = """
import json, resource, sys
from workloads import minimax
from workloads.runtime import LocalRuntime
config = minimax.Config(steps=int(sys.argv[1]), algorithms=("gda",), lrs=tuple(i / 1e3 for i in range(1, 129)))
minimax.train_loop(config, LocalRuntime())
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BARE_TUNE = """
import dataclasses, json, sys, time
import ray
from ray import tune
from orchestrator.engine.session import init_kwargs
from orchestrator.studies import EXPERIMENTS
from workloads import minimax
from workloads.runtime import SingleProcess

class Collect(SingleProcess):  # what a trial hands back: its rows, as the orchestrator's trials do
    device, artifact_dir = "cpu", "."
    def report(self, metrics, final=False, checkpoint=None, table=None):
        tune.report({"rows": len(metrics.get("lr", [0]))} if final else {"steps": 1})

exp = EXPERIMENTS["minimax"]["local"].with_overrides({k: str(v) for k, v in json.loads(sys.argv[1]).items()})
exp = exp.with_sweep(json.loads(sys.argv[2]), int(sys.argv[3]) if sys.argv[3] != "0" else None)
points = [dict(o) for o, _ in exp.trial_points()]
base = exp.config

def trial(params):
    minimax.train_loop(dataclasses.replace(base, **points[params["index"]]), Collect())

ray.init(**{**init_kwargs(), "include_dashboard": False})
tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                   param_space={"index": tune.grid_search(list(range(len(points))))},
                   tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=int(ray.cluster_resources()["CPU"])),
                   run_config=tune.RunConfig(storage_path=sys.argv[4], verbose=0))
results = tuner.fit()
ray.shutdown()
print(json.dumps({"trials": len(results), "errors": results.num_errors}))
"""


def synthetic_folder(root: Path, runs: int, num_lrs: int) -> tuple[list, list]:
    """`runs` runs of minimax written through the project's store and compacted as a run does;
    returns (the last run's experiment, its trial keys)."""
    from orchestrator.engine.plan import TrialPlan
    from orchestrator.results.store import ResultStore, report_frame
    from orchestrator.studies import EXPERIMENTS, WORKLOADS
    from workloads import minimax
    from workloads.runtime import LocalRuntime

    store = ResultStore(root)
    store.open_for_writing()
    workload = WORKLOADS["minimax"]
    for r in range(runs):
        run_id = f"20260101-{r // 3600:02d}{r // 60 % 60:02d}{r % 60:02d}-{r % 65536:04x}"
        exp = EXPERIMENTS["minimax"]["local"].with_overrides({"num_lrs": str(num_lrs), "steps": str(100 + r)})
        plan = TrialPlan.make(exp, workload, store, run_id, None, False, str(root / "_ray"))
        for i, config in enumerate(plan.configs):
            runtime = LocalRuntime()
            minimax.train_loop(config, runtime)
            ids = plan.ids(i, f"trial_{i:05d}")
            steps = report_frame(runtime.steps[0]).assign(**ids)
            trials = report_frame(runtime.finals[0]).assign(**ids, status="TERMINATED", error=None,
                                                             **plan.config_columns(i))
            store.write("minimax", "steps", plan.attempts[i], steps, plan.schema("steps"))
            store.write("minimax", "trials", plan.row_part(i), trials, plan.schema("trials"))
        import pandas as pd

        store.write_spec("minimax", run_id, pd.DataFrame({
            "run_id": run_id, "study": "minimax", "profile": "local", "trial_index": range(len(plan.keys)),
            "trial_key": plan.keys, "trial_name": plan.names, "params": "{}", "scheduler": "fifo", "kept": False,
            "stored_key": plan.keys, "code_version": "bench", "started_at": time.time()}))
        store.compact_run("minimax", run_id, plan.attempts)
    return exp, plan.keys


def folder_costs(root: Path, exp, keys) -> dict:
    from orchestrator.cli.kept import kept_rows
    from orchestrator.reports.study import study_report
    from orchestrator.results.store import ResultStore

    store = ResultStore(root)
    started = time.perf_counter()
    kept, _ = kept_rows(store, exp, keys, lambda _: None)
    lookup = time.perf_counter() - started
    started = time.perf_counter()
    study_report("minimax", store)
    report = time.perf_counter() - started
    steps = store.read("minimax", "steps", columns=["run_id"])
    return {"lookup": lookup, "report": report, "kept": len(kept), "step_rows": len(steps),
            "files": sum(1 for _ in root.rglob("*.parquet"))}


def peak_memory(steps: int) -> float:
    out = subprocess.run([sys.executable, "-c", MEMORY, str(steps)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def minimax_side_by_side(tmp: Path, overrides: dict, sweep: dict, samples: int, env: dict) -> tuple[float, float]:
    """(orchestrator run, bare Tune) wall seconds, each a fresh process over the same trials."""
    cli = [sys.executable, "-m", "orchestrator", "run", "minimax", "--results", str(tmp / "orchestrator"),
           "--no-dashboard", *(a for k, v in overrides.items() for a in ("--set", f"{k}={v}")),
           *(a for k, v in sweep.items() for a in ("--sweep", f"{k}={v}")),
           *(("--samples", str(samples)) if samples else ())]
    bare = [sys.executable, "-c", BARE_TUNE, json.dumps(overrides), json.dumps(sweep), str(samples), str(tmp / "bare")]
    return timed(cli, env), timed(bare, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--num-lrs", type=int, default=80, help="learning rates per synthetic run (x5 algorithms)")
    parser.add_argument("--lrs", type=int, default=20000)
    parser.add_argument("--noop-trials", type=int, default=2000)
    parser.add_argument("--skip-ray", action="store_true", help="only the folder and memory parts")
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        exp_one, keys_one = synthetic_folder(tmp / "one", 1, args.num_lrs)
        exp_many, keys_many = synthetic_folder(tmp / "many", args.runs, args.num_lrs)
        print(f"folders written in {time.perf_counter() - started:.0f} s")
        one, many = folder_costs(tmp / "one", exp_one, keys_one), folder_costs(tmp / "many", exp_many, keys_many)
        for name, c in (("1 run", one), (f"{args.runs} runs", many)):
            print(f"{name:>9}: {c['step_rows']:>8} step rows in {c['files']:>4} files; lookup {c['lookup']:.3f} s "
                  f"({c['kept']} rows kept), report {c['report']:.2f} s")
        lookup_ratio, report_ratio = many["lookup"] / one["lookup"], many["report"] / one["report"]
        figures += [f"lookup {many['lookup']:.2f} s at {args.runs} runs ({lookup_ratio:.2f}x 1 run)",
                    f"report {many['report']:.2f} s ({report_ratio:.2f}x)"]
        small, large = peak_memory(1000), peak_memory(1_000_000)
        print(f"minimax trial peak memory: T=1e3 {small:.0f} MB, T=1e6 {large:.0f} MB")
        figures.append(f"minimax T=1e6 peak {large:.0f} MB (T=1e3: {small:.0f} MB)")
        if not args.skip_ray:
            ours, bare = minimax_side_by_side(tmp / "lrs", {"num_lrs": args.lrs}, {}, 0, env)
            print(f"minimax {args.lrs} lrs x 5 algorithms: orchestrator {ours:.1f} s, bare Tune {bare:.1f} s")
            figures.append(f"minimax {args.lrs} lrs {ours / bare:.2f}x bare Tune")
            noop = {"num_lrs": 1, "steps": 1, "algorithms": "gda"}
            ours, bare = minimax_side_by_side(tmp / "noop", noop, {"x0": "uniform(0.5,1.5)"}, args.noop_trials, env)
            per_ours, per_bare = ours / args.noop_trials * 1e3, bare / args.noop_trials * 1e3
            print(f"{args.noop_trials} no-op trials: orchestrator {ours:.1f} s ({per_ours:.0f} ms/trial), "
                  f"bare Tune {bare:.1f} s ({per_bare:.0f} ms/trial)")
            figures.append(f"no-op trial {per_ours:.0f} ms vs {per_bare:.0f} ms bare ({ours / bare:.2f}x)")
    print("scale: " + ", ".join(figures))


if __name__ == "__main__":
    main()
