"""One training trial through the orchestrator (Ray Tune -> Train V2 TorchTrainer) against the same
loop without Ray, on the same data, config, epochs and CPUs, measured side by side in one run.

    python bench/bench_trial.py gan  [--data-dir DIR] [--set KEY=VALUE ...]
    python bench/bench_trial.py clip [--data-dir DIR] [--set KEY=VALUE ...]

Both sides are fresh processes. The plain side calls `train_loop(config, LocalRuntime())` with
torch using the same number of threads a Train worker gets (its `cpus_per_worker`). Printed:
  trial ratio   = the orchestrator trial's wall time (Tune's time_total_s: Train worker-group start,
                  DDP/process-group setup, per-epoch checkpoints and reports included) / the plain
                  loop's wall time (model build, data load and training, inside its process);
  process ratio = whole command vs whole plain process (adds Ray's own start and stop).
Targets: GAN trial ratio <= 1.10 for a run of 60 s or more.
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

DEFAULTS = {  # about a minute of training on a 2-core CPU, one worker holding both cores
    "gan": ["train_images=16000", "epochs=1", "sample_epochs=1", "fid_images=1000",
            "num_workers=1", "cpus_per_worker=2"],
    "clip": ["image_model=efficientnet_lite0", "image_weights=pkg:efficientnet-lite0", "train_image_encoder=true",
             "train_text_encoder=true", "train_images=320", "test_images=100", "epochs=2", "batch_size=32",
             "image_size=160", "prompts=A dog sitting alone in a park", "num_workers=1", "cpus_per_worker=2"],
}

PLAIN = """
import json, sys, time
t0 = time.perf_counter()
import torch
from orchestrator.cli import resolve
from workloads.runtime import LocalRuntime
args = json.loads(sys.argv[1])
(exp,) = resolve(args["study"], "local", args["overrides"], args["data_dir"])
torch.set_num_threads(int(exp.scaling.cpus_per_worker))
from orchestrator.registry import WORKLOADS
module = WORKLOADS[args["study"]].load()  # the module the orchestrator would run
runtime = LocalRuntime(artifact_dir=args["artifacts"])
start = time.perf_counter()
module.train_loop(exp.config, runtime)
final = runtime.finals[0]
print(json.dumps({"loop_s": time.perf_counter() - start, "images_per_s": runtime.steps[-1]["images_per_s"],
                  "metric": final.get("fid", final.get("t2i_r10"))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(DEFAULTS))
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = DEFAULTS[args.study] + args.overrides
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}

    from orchestrator.cli import preflight, resolve

    (exp,) = resolve(args.study, "local", overrides, args.data_dir)
    preflight([exp])  # data extracted, classifier cached: neither side pays for them
    with tempfile.TemporaryDirectory() as tmp:
        payload = json.dumps({"study": args.study, "overrides": overrides, "data_dir": args.data_dir,
                              "artifacts": f"{tmp}/plain"})
        start = time.perf_counter()
        plain_out = subprocess.run([sys.executable, "-c", PLAIN, payload], cwd=ROOT, env=env, check=True,
                                   capture_output=True, text=True).stdout
        plain_process = time.perf_counter() - start
        plain = json.loads(plain_out.strip().splitlines()[-1])

        cmd = [sys.executable, "-m", "orchestrator", "run", args.study, "--results", f"{tmp}/results", "--no-dashboard",
               "--data-dir", args.data_dir] + [a for o in overrides for a in ("--set", o)]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        orch_process = time.perf_counter() - start
        import pandas as pd

        trial = pd.read_parquet(f"{tmp}/results/{args.study}/trials.parquet").iloc[0]
        steps = pd.read_parquet(f"{tmp}/results/{args.study}/steps.parquet")

    metric = "fid" if args.study == "gan" else "t2i_r10"
    print(f"{args.study}: {' '.join(overrides)}")
    print(f"plain loop (no Ray)      : {plain['loop_s']:7.1f} s  process {plain_process:6.1f} s  "
          f"{plain['images_per_s']:8.1f} images/s  {metric} {plain['metric']:.4g}")
    print(f"orchestrator trial       : {trial['wall_time_s']:7.1f} s  process {orch_process:6.1f} s  "
          f"{steps['images_per_s'].iloc[-1]:8.1f} images/s  {metric} {trial[metric]:.4g}")
    print(f"trial ratio              : {trial['wall_time_s'] / plain['loop_s']:.3f}"
          + ("  (target <= 1.10 for runs of 60 s or more)" if args.study == "gan" else ""))
    print(f"process ratio            : {orch_process / plain_process:.3f}")


if __name__ == "__main__":
    main()
