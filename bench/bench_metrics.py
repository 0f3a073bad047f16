"""What recording the live study metrics (orchestrator/engine/metrics.py) costs, per report and as a
fraction of an epoch of the local default GAN, measured side by side on this machine.

    python bench/bench_metrics.py [--reports 2000]

The metrics are recorded in the driver, in Tune's result callback (sink.RowSink), never inside a
trial: a report's recording delays the driver's handling of that result, not the trial's training.
Measures, with a local Ray up: the time of one epoch report's recording (StudyMetrics.step and
restarts, as the sink calls them: 9 gauge values) and of the same calls with recording off (the
bookkeeping around them); a GAN epoch of the local profile (train_images 12800, batch 64: 200 steps),
from the step rate of the real gan_step at batch 64 on this CPU. Last line:
`metrics: 41 us per epoch report, 7.6e-07 of a local GAN epoch (53.8 s)`.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch


def report_cost(reports: int, enabled: bool) -> float:
    """Seconds per epoch report's recording."""
    from orchestrator.engine.metrics import StudyMetrics

    metrics = StudyMetrics("gan", "bench-run")
    metrics.enabled = enabled
    row = {"epoch": 3, "loss_d": 1.31, "loss_g": 0.82, "val_fid": 240.7, "fid": 251.3, "images_per_s": 350.0}
    started = time.perf_counter()
    for i in range(reports):
        metrics.step(f"gan-lr={i % 4}", i, 50, row, ("fid", "val_fid"))
        metrics.restarts(f"gan-lr={i % 4}", 0, 0)
    return (time.perf_counter() - started) / reports


def gan_epoch_s(images: int = 12800, batch: int = 64) -> float:
    """One local-profile GAN epoch: its steps at the measured rate of gan_step (fp32, batch 64)."""
    from workloads.gan.loop import gan_step
    from workloads.gan.models import Discriminator, Generator

    torch.manual_seed(0)
    g, d = Generator(), Discriminator()
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-4), torch.optim.Adam(d.parameters(), 1e-4)
    real, z, bce = torch.randn(batch, 1, 28, 28), torch.randn(batch, 100), torch.nn.BCEWithLogitsLoss()
    step = lambda: gan_step(g, d, opt_g, opt_d, real, z, bce, contextlib.nullcontext())  # noqa: E731
    step()  # warm-up
    n, started = 20, time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - started) / n * (images // batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=2000)
    args = parser.parse_args()
    import ray

    from orchestrator.engine.session import init_kwargs

    ray.init(**{**init_kwargs(dashboard=False), "num_cpus": 1})
    try:
        on = report_cost(args.reports, enabled=True)
        off = report_cost(args.reports, enabled=False)
    finally:
        ray.shutdown()
    epoch = gan_epoch_s()
    print(f"per epoch report: {on * 1e6:.0f} us recording (9 gauge values), {off * 1e6:.1f} us with recording off")
    print(f"local GAN epoch (12800 images, batch 64, fp32): {epoch:.1f} s")
    print(f"metrics: {on * 1e6:.0f} us per epoch report, {on / epoch:.1e} of a local GAN epoch ({epoch:.1f} s)")


if __name__ == "__main__":
    main()
