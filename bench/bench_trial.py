"""One training trial through the orchestrator (Ray Tune -> Train V2 TorchTrainer) against the same
loop without Ray, on the same data, config, epochs and CPUs, measured side by side in one run.

    python bench/bench_trial.py gan  [--data-dir DIR] [--set KEY=VALUE ...] [--orchestrator-first]
    python bench/bench_trial.py clip [--data-dir DIR] [--set KEY=VALUE ...] [--orchestrator-first]

The plain side is `python -c "...train_loop(config, LocalRuntime())"` in a fresh process with
OMP_NUM_THREADS set to the worker's `cpus_per_worker`, as Ray sets it in a Train worker. Printed:
  plain process  = its whole wall time: imports (torch, torchvision, the workload) + setup (data,
                   models, FID reference) + training; what `python train.py` costs a researcher;
  trial          = the orchestrator trial's wall time (Tune's time_total_s): Train controller and
                   worker start, the worker's own imports and setup, DDP/process-group setup,
                   training, per-epoch checkpoints and reports, teardown;
  trial ratio    = trial / plain process (like for like: both include importing the training stack);
  vs loop only   = trial / (plain setup + training): stricter, charges the workload's imports to Ray;
  images/s       = steady-state training throughput on each side (last epoch);
  process ratio  = the whole `orchestrator run` command / the plain process (adds Ray's start/stop).
Target: GAN trial ratio <= 1.10 for a run of 60 s or more.

Default: one worker with 1 CPU on this 2-core box, leaving the other core to Ray's own ~15 processes
(GCS, raylet, dashboard agent, Tune and Train controllers, their pollers), as a cluster's head node
does. With `--set cpus_per_worker=2` the trial shares both cores with them and loses throughput (its
images/s against the plain loop's, printed: 0.88 in docs/benchmarks.md).
Data and caches (extracted FashionMNIST, the FID classifier, CLIP features) are prepared before
timing so that neither side pays for them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULTS = {  # about two minutes (GAN) / one (CLIP) of training on one core of a 2-core CPU box
    "gan": ["train_images=16000", "epochs=1", "sample_epochs=1", "fid_images=1000",
            "num_workers=1", "cpus_per_worker=1"],
    "clip": ["dataset=flickr8k_subset", "image_model=pkg:efficientnet-lite0", "train_image_encoder=true",
             "train_text_encoder=true", "train_images=320", "test_images=100", "epochs=2", "batch_size=32",
             "image_size=160", "prompts=A dog sitting alone in a park", "num_workers=1", "cpus_per_worker=1"],
}

PLAIN = """
import json, sys, time
t0 = time.perf_counter()
from orchestrator.studies import resolve
from workloads.runtime import LocalRuntime
args = json.loads(sys.argv[1])
(exp,) = resolve(args["study"], "local", args["overrides"], args["data_dir"])
from orchestrator.studies import WORKLOADS
module = WORKLOADS[args["study"]].load()  # the module the orchestrator would run
runtime = LocalRuntime(artifact_dir=args["artifacts"])
start = time.perf_counter()
module.train_loop(exp.config, runtime)
end = time.perf_counter()
final = runtime.finals[0]
print(json.dumps({"imports_s": start - t0, "loop_s": end - start, "train_s": final["train_time_s"],
                  "images_per_s": runtime.steps[-1]["images_per_s"], "metric": final.get("fid", final.get("t2i_r10"))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(DEFAULTS))
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--orchestrator-first", action="store_true", help="run the orchestrator side first "
                        "(to check that the order of the two runs does not bias the ratio)")
    args = parser.parse_args()
    overrides = DEFAULTS[args.study] + args.overrides
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}

    from orchestrator.studies import preflight, resolve

    (exp,) = resolve(args.study, "local", overrides, args.data_dir)
    preflight([exp])  # data extracted, classifier cached: neither side pays for them
    with tempfile.TemporaryDirectory() as tmp:
        payload = json.dumps({"study": args.study, "overrides": overrides, "data_dir": args.data_dir,
                              "artifacts": f"{tmp}/plain"})
        threads = str(int(exp.scaling.cpus_per_worker))  # as Ray sets OMP_NUM_THREADS in its workers
        plain_cmd = [sys.executable, "-c", PLAIN, payload]
        orch_cmd = [sys.executable, "-m", "orchestrator", "run", args.study, "--results", f"{tmp}/results",
                    "--no-dashboard", "--data-dir", args.data_dir] + [a for o in overrides for a in ("--set", o)]
        if args.study == "clip":  # one trial of the profile's config, as the plain side runs (not its pairs x seeds)
            orch_cmd += ["--seeds", "1", "--sweep", f"image_model={exp.config.image_model}"]
        runs = [("plain", plain_cmd, {**env, "OMP_NUM_THREADS": threads}), ("orchestrator", orch_cmd, env)]
        walls, outputs = {}, {}
        for name, cmd, run_env in runs[::-1] if args.orchestrator_first else runs:
            start = time.perf_counter()
            outputs[name] = subprocess.run(cmd, cwd=ROOT, env=run_env, check=True, capture_output=True, text=True).stdout
            walls[name] = time.perf_counter() - start
        plain_process, orch_process = walls["plain"], walls["orchestrator"]
        plain = json.loads(outputs["plain"].strip().splitlines()[-1])
        import pandas as pd

        trial = pd.read_parquet(f"{tmp}/results/{args.study}/trials.parquet").iloc[0]
        steps = pd.read_parquet(f"{tmp}/results/{args.study}/steps.parquet")

    metric = "fid" if args.study == "gan" else "t2i_r10"
    plain_setup = plain["loop_s"] - plain["train_s"]
    orch_ips = steps["images_per_s"].iloc[-1]
    print(f"{args.study}: {' '.join(overrides)}")
    print(f"plain process  : {plain_process:7.1f} s = imports {plain['imports_s']:.1f} + setup {plain_setup:.1f} + "
          f"training {plain['train_s']:.1f};  {plain['images_per_s']:7.1f} images/s  {metric} {plain['metric']:.4g}")
    print(f"trial          : {trial['wall_time_s']:7.1f} s = training {trial['train_time_s']:.1f} + the rest "
          f"{trial['wall_time_s'] - trial['train_time_s']:.1f};  {orch_ips:7.1f} images/s  {metric} {trial[metric]:.4g}")
    print(f"trial ratio    : {trial['wall_time_s'] / plain_process:.3f}"
          + ("  (target <= 1.10 for runs of 60 s or more)" if args.study == "gan" else ""))
    print(f"vs loop only   : {trial['wall_time_s'] / plain['loop_s']:.3f}  (plain setup + training, no imports)")
    print(f"images/s ratio : {orch_ips / plain['images_per_s']:.3f}  (orchestrator / plain, steady state)")
    print(f"process ratio  : {orch_process / plain_process:.3f}  (whole command, Ray start and stop included)")


if __name__ == "__main__":
    main()
