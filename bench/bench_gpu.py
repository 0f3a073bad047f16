"""GPU numbers in one command: the GAN and CLIP trials on a GPU, plain loop vs the orchestrator's
trial (bench_trial.py with use_gpu), GPU utilisation and memory while they run, and the card.

    python bench/bench_gpu.py [--data-dir DIR]

Last line: `gpu: <card> gan X img/s (ratio R), clip Y img/s (ratio S)`, where X and Y are the
orchestrator trial's steady-state images/s and R, S its trial ratio (trial / plain process). On a
machine without a CUDA GPU it prints `gpu: none` and exits 0.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_SETTINGS = {  # long enough that start-up costs do not dominate on a fast card
    "gan": ["use_gpu=true", "cpus_per_worker=4", "train_images=60000", "epochs=2", "sample_epochs=2",
            "fid_images=2000"],
    "clip": ["use_gpu=true", "cpus_per_worker=4", "train_images=1500", "test_images=500", "epochs=2",
             "batch_size=128", "image_size=224"],
}


class Sampler(threading.Thread):
    """nvidia-smi every second: utilisation (%) and memory used (MiB) of GPU 0."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, mem = out.stdout.strip().split(",")[:2]
                self.samples.append((float(util), float(mem)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu: none")
        return
    card = torch.cuda.get_device_name(0)
    found = {}
    for study, settings in GPU_SETTINGS.items():
        sampler = Sampler()
        sampler.start()
        cmd = [sys.executable, str(ROOT / "bench" / "bench_trial.py"), study, "--data-dir", args.data_dir,
               *[a for s in settings for a in ("--set", s)]]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        sampler.stop.set()
        sampler.join()
        print(out.strip())
        trial_ips = float(re.search(r"trial\s+:.*?;\s+([\d.]+) images/s", out).group(1))
        ratio = float(re.search(r"trial ratio\s+:\s+([\d.]+)", out).group(1))
        busy = [u for u, _ in sampler.samples if u > 0]
        print(f"{study}: GPU utilisation mean {sum(busy) / max(len(busy), 1):.0f}% over {len(busy)} busy seconds, "
              f"memory peak {max((m for _, m in sampler.samples), default=0):.0f} MiB")
        found[study] = (trial_ips, ratio)
    print(f"gpu: {card} gan {found['gan'][0]:.0f} img/s (ratio {found['gan'][1]:.2f}), "
          f"clip {found['clip'][0]:.0f} img/s (ratio {found['clip'][1]:.2f})")


if __name__ == "__main__":
    main()
