"""The GAN study: models as the study wrote them, the quality score, and a real 2-worker DDP run
under Ray Train with an injected failure, resumed from its checkpoint."""

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.cli import main
from workloads.gan import data, loop, quality
from workloads.gan.config import Config
from workloads.gan.models import Discriminator, Generator


def test_model_shapes_and_init():
    g, d = loop.build_models(Config())
    z = torch.randn(5, 100)
    x = g(z)
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1  # tanh output
    assert d(x).shape == (5,)
    assert isinstance(g.project[1], torch.nn.BatchNorm1d)  # the study's BatchNorm2d on a flat tensor fails
    conv = d.net[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias) == \
        (1, 64, (5, 5), (2, 2), (2, 2), None)
    assert abs(float(g.project[0].weight.detach().std()) - 0.02) < 0.002  # N(0, 0.02) init
    assert sum(p.numel() for p in Generator().parameters()) == 2305472
    assert sum(p.numel() for p in Discriminator().parameters()) == 212801


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    assert quality.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    shifted = quality.frechet_distance(a, a + 2.0)
    assert shifted == pytest.approx(8 * 4.0, rel=1e-6)  # |mu1 - mu2|^2 with equal covariances
    b = rng.normal(size=(4000, 8)) * 3.0  # same mean, variance 9: FID = 8 * (1 + 9 - 2 * 3)
    assert quality.frechet_distance(a, b) == pytest.approx(32, rel=0.05)


def test_class_coverage():
    assert quality.class_coverage(np.arange(1000) % 10) == (1.0, pytest.approx(1.0))
    coverage, entropy = quality.class_coverage(np.zeros(1000, dtype=int))
    assert coverage == pytest.approx(0.1) and entropy == 0.0


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(data.DataError, match="point --data-dir or ORCHESTRATOR_DATA_DIR"):
        data.locate(str(tmp_path / "nowhere"), str(tmp_path / "cache"))
    code = main(["run", "gan", "--data-dir", str(tmp_path / "nowhere"), "--set", f"cache_dir={tmp_path / 'cache'}",
                 "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "FashionMNIST not found" in err and err.count("\n") == 1


def test_a_wrong_data_folder_fails_even_when_the_cache_holds_the_data(gan_cache, tmp_path, capsys):
    """The cache already holds FashionMNIST: a mistyped --data-dir is still an error (before, the run
    trained on the cache and exited 0)."""
    with pytest.raises(data.DataError, match="FashionMNIST not found"):
        data.locate(str(tmp_path / "nonexistent"), gan_cache)
    code = main(["run", "gan", "--data-dir", str(tmp_path / "nonexistent"), "--set", f"cache_dir={gan_cache}",
                 "--set", "epochs=1", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "FashionMNIST not found" in err and err.count("\n") == 1
    assert not (tmp_path / "results" / "gan").exists()  # nothing ran


@pytest.fixture(scope="module")
def cache_dir(gan_cache):
    return gan_cache


def test_classifier_is_a_real_fashion_mnist_classifier(data_dir, cache_dir):
    _, accuracy = quality.load_classifier(data_dir, cache_dir)
    assert accuracy >= 0.90  # the FID's feature extractor


def test_extraction_never_writes_into_the_source(data_dir, cache_dir):
    from pathlib import Path

    assert sorted(p.name for p in (Path(data_dir) / "FashionMNIST" / "raw").iterdir()) == sorted(
        f"{name}.gz" for name in data.FILES)
    images, labels = data.load(data_dir, cache_dir, train=False)
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert images.min() == -1 and images.max() == 1


def test_fid_separates_real_from_noise(data_dir, cache_dir):
    scorer = quality.Scorer(data_dir, cache_dir, 1000)
    real, _ = data.load(data_dir, cache_dir, train=True, limit=1000)
    noise = torch.rand(1000, 1, 28, 28) * 2 - 1
    real_score, noise_score = scorer.score(real), scorer.score(noise)
    assert real_score["fid"] * 20 < noise_score["fid"]
    assert real_score["class_coverage"] == 1.0 and noise_score["class_coverage"] <= 0.2
    # two references, disjoint halves of the test split: val_fid selects, fid is reported
    assert real_score["val_fid"] * 20 < noise_score["val_fid"] and real_score["val_fid"] != real_score["fid"]
    assert quality.references(1000) == {"val_fid_reference": "FashionMNIST test[0:1000]",
                                        "fid_reference": "FashionMNIST test[5000:6000]"}
    test, _ = data.load(data_dir, cache_dir, train=False)
    assert scorer.score(test[5000:6000])["fid"] < 1e-6 < scorer.score(test[5000:6000])["val_fid"]
    with pytest.raises(ValueError, match="fid_images must be"):
        Config(fid_images=5001)


def _kill_a_train_worker_after_epoch_1(steps_dir, killed: list, timeout_s: float = 300) -> None:
    """Wait for epoch 1's row, then SIGKILL one live Ray Train worker process (it is in epoch 2).
    Only this test session's workers: descendants of this process, which started the session's Ray."""
    import os
    import signal
    import time

    from tests.chaos import train_workers

    deadline = time.time() + timeout_s
    while time.time() < deadline and not (steps_dir.exists() and any(
            not p.name.startswith(".") for p in steps_dir.glob("*.parquet"))):  # a whole part, not a writer's temporary
        time.sleep(0.2)
    for pid in train_workers(os.getpid())[:1]:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.fixture(scope="module")
def ddp_run(ray_session, data_dir, cache_dir, tmp_path_factory):
    """2 Train workers (DDP, gloo) x 2 epochs on 640 real images; a worker process is killed with
    SIGKILL in the middle of epoch 2 (a real kill, from outside, while main() runs)."""
    import threading

    results = tmp_path_factory.mktemp("results")
    killed: list = []
    killer = threading.Thread(target=_kill_a_train_worker_after_epoch_1,
                              args=(results / "gan" / "steps.parquet", killed), daemon=True)
    killer.start()
    code = main(["run", "gan", "--results", str(results), "--data-dir", data_dir,
                 "--set", f"cache_dir={cache_dir}", "--set", "train_images=640", "--set", "epochs=2",
                 "--set", "sample_epochs=1", "--set", "fid_images=500", "--set", "num_workers=2", "--no-dashboard"])
    killer.join(timeout=5)
    assert code == 0 and len(killed) == 1
    return results


def test_ddp_run_resumes_after_failure_and_records_each_epoch_once(ddp_run):
    trials = pd.read_parquet(ddp_run / "gan" / "trials.parquet")
    steps = pd.read_parquet(ddp_run / "gan" / "steps.parquet")
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "TERMINATED" and row["world_size"] == 2
    assert row["resumed_from_epoch"] == 1  # the restarted worker group continued from epoch 1's checkpoint
    assert sorted(steps["epoch"]) == [1, 2]
    for column in ("loss_d", "loss_g", "d_x", "d_g_z", "images_per_s", "wall_time_s"):
        assert np.isfinite(steps[column]).all(), column
    assert steps["fid"].notna().all()  # epoch 1 (sample epoch) and 2 (the last)
    assert 0 < row["d_x"] < 1 and row["classifier_accuracy"] >= 0.9


def test_ddp_run_writes_samples_tensorboard_and_weights(ddp_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (artifacts,) = (ddp_run / "gan" / "artifacts").iterdir()
    assert sorted(p.name for p in (artifacts / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (artifacts / "generator.pt").exists() and (artifacts / "discriminator.pt").exists()
    events = EventAccumulator(str(artifacts / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("Loss/Generator")]
    assert "Loss/Discriminator" in events.Tags()["scalars"]
    assert steps == sorted(set(steps)) and len(steps) == 2 * 640 // 64  # per step, once, across the resume


def test_trained_generator_beats_an_untrained_one(ddp_run, data_dir, cache_dir):
    from workloads.gan.generate import load_generator

    (artifacts,) = (ddp_run / "gan" / "artifacts").iterdir()
    scorer = quality.Scorer(data_dir, cache_dir, 1000)
    untrained, _ = loop.build_models(Config())
    trained = load_generator(artifacts / "generator.pt")
    fid_untrained = scorer.score(loop.sample(untrained, 1000, 100, 1, "cpu"))["fid"]
    fid_trained = scorer.score(loop.sample(trained, 1000, 100, 1, "cpu"))["fid"]
    assert fid_trained < 0.95 * fid_untrained


def test_generate_writes_a_valid_png(ddp_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["generate", "gan", "--results", str(ddp_run), "--n", "16", "--out", str(out)]) == 0
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", blob[16:24])
    assert (width, height) == (4 * 30 + 2, 4 * 30 + 2)  # 4x4 tiles of 28 px with 2 px padding
    assert zlib.crc32(blob[12:29]) == struct.unpack(">I", blob[29:33])[0]  # IHDR checksum


def test_generate_takes_a_checkpoint_and_a_seed(ddp_run, tmp_path):
    """`generate --checkpoint PATH --seed S`: the same seed gives the same grid byte for byte, another
    seed another grid; a checkpoint outside any results folder works; a missing one is one line."""
    weights = tmp_path / "elsewhere.pt"
    weights.write_bytes((ddp_run / "gan" / "artifacts").glob("*/generator.pt").__next__().read_bytes())
    grids = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        grids[name] = tmp_path / f"{name}.png"
        assert main(["generate", "gan", "--checkpoint", str(weights), "--seed", str(seed), "--n", "16",
                     "--out", str(grids[name])]) == 0
    assert grids["a"].read_bytes() == grids["b"].read_bytes() != grids["c"].read_bytes()
    assert main(["generate", "gan", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.png")]) == 2


def test_report_shows_curves_and_sample_grids(ddp_run, capsys):
    from tests.test_cli import html_images

    assert main(["report", "gan", "--results", str(ddp_run)]) == 0
    out = capsys.readouterr().out
    assert "fid" in out and "samples:" in out
    assert main(["report", "--results", str(ddp_run)]) == 0
    page = (ddp_run / "report.html").read_text()
    assert "<h2>gan</h2>" in page and len(html_images(page)) == 3  # curves + 2 sample grids


def test_the_step_runs_in_channels_last_and_bf16_as_in_fp32():
    """The GPU settings, on CPU: channels_last gives the same step; bf16 autocast (CPU autocast here)
    a close one. (Their speed is a GPU question: bench/bench_gpu.py.)"""
    import contextlib

    from torch import nn

    def step(layout, autocast):
        g, d = loop.build_models(Config(dropout=0.0))
        g, d = g.to(memory_format=layout), d.to(memory_format=layout)
        opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
        real = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1).contiguous(memory_format=layout)
        z = torch.randn(16, 100, generator=torch.Generator().manual_seed(1))
        loss_d, loss_g, _ = loop.gan_step(g, d, opt_g, opt_d, real, z, nn.BCEWithLogitsLoss(), autocast)
        return loss_d.item(), loss_g.item()

    plain = step(torch.contiguous_format, contextlib.nullcontext())
    assert step(torch.channels_last, contextlib.nullcontext()) == pytest.approx(plain, rel=1e-4)
    assert step(torch.contiguous_format, torch.autocast("cpu", dtype=torch.bfloat16)) == pytest.approx(plain, rel=0.05)


def test_the_gpu_settings_reach_the_loop_and_keep_its_numbers(gan_cache, data_dir, monkeypatch):
    """Config(channels_last, amp, compile), through the loop a trial runs: G and D are handed to the
    runtime in NHWC, both are compiled (Dynamo traces the real models and step; the aot_eager backend
    stands in for inductor, whose kernels are a GPU question), the rows record bf16 where the CPU has
    it, and the epoch's losses stay those of the plain loop."""
    from workloads.common import native_bf16
    from workloads.runtime import LocalRuntime

    class Recording(LocalRuntime):
        def prepare_model(self, model):
            self.models = [*getattr(self, "models", []), model]
            return model

    compiled, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real_compile(model, backend="aot_eager"))
    base = Config(data_dir=data_dir, cache_dir=gan_cache, train_images=256, epochs=1, sample_epochs=(1,), fid_images=200,
                  dropout=0.0)
    plain, tuned = LocalRuntime(), Recording()
    loop.train_loop(base, plain)
    assert compiled == []
    loop.train_loop(dataclasses.replace(base, channels_last=True, amp=True, compile=True), tuned)
    assert len(compiled) == 2 and compiled == tuned.models  # G and D, as the runtime prepared them
    for model in tuned.models:
        weights = [p for p in model.parameters() if p.ndim == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert tuned.finals[0]["bf16"] == native_bf16("cpu") and plain.finals[0]["bf16"] is False
    rel = 0.05 if native_bf16("cpu") else 1e-4
    for key in ("loss_d", "loss_g"):
        assert tuned.steps[0][key] == pytest.approx(plain.steps[0][key], rel=rel), key


def test_bf16_autocast_only_where_native():
    """amp turns bf16 on where the CPU has it natively (the flags Linux reports), and a GAN step under it
    stays close to the fp32 step from the same weights and inputs."""
    import contextlib

    from workloads.common import bf16_autocast, native_bf16
    from workloads.gan.loop import gan_step
    from workloads.gan.models import Discriminator, Generator

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert native_bf16("cpu") == ("avx512_bf16" in flags or "amx_tile" in flags)
    assert isinstance(bf16_autocast("cpu", enabled=False), contextlib.nullcontext)
    if not native_bf16("cpu"):
        assert isinstance(bf16_autocast("cpu"), contextlib.nullcontext)
        pytest.skip("this CPU has no native bf16: amp leaves it in fp32")
    losses = []
    for autocast in (contextlib.nullcontext(), bf16_autocast("cpu")):
        torch.manual_seed(0)
        g, d = Generator(), Discriminator().eval()  # eval: no dropout, so both passes see the same network
        opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-4), torch.optim.Adam(d.parameters(), 1e-4)
        real, z = torch.rand(16, 1, 28, 28) * 2 - 1, torch.randn(16, 100)
        loss_d, loss_g, _ = gan_step(g, d, opt_g, opt_d, real, z, torch.nn.BCEWithLogitsLoss(), autocast)
        losses.append(torch.stack([loss_d, loss_g]).detach())
    assert torch.isfinite(losses[1]).all()
    assert torch.allclose(losses[0], losses[1], rtol=0.05), losses


def test_report_aggregates_the_gan_over_seeds():
    from orchestrator.reports.study import gan_over_seeds

    trials = pd.DataFrame({"seed": [42, 43, 42, 43], "lr": [1e-4, 1e-4, 2e-4, 2e-4], "beta1": 0.5,
                           "fid": [200.0, 210.0, 300.0, 320.0], "class_coverage": [0.9, 0.8, 0.7, 0.6]})
    lines = gan_over_seeds(trials)
    assert lines[1] == f"  lr=0.0001: fid 205 ± {np.std([200, 210], ddof=1):.2g}  class_coverage 0.85 ± 0.071  (2 seeds)"
    assert lines[2].startswith("  lr=0.0002: fid 310 ± 14")
    assert gan_over_seeds(trials[trials["seed"] == 42]) == []  # one seed: nothing to aggregate


class _Reclaimed(Exception):
    """The node went away right after the preemption checkpoint was saved."""


def test_a_preemption_checkpoint_mid_epoch_resumes_to_the_uninterrupted_numbers(gan_cache, data_dir, tmp_path):
    """A notice in the middle of epoch 2 saves a checkpoint there; the node dies; the resumed run
    trains epoch 2's remaining batches in their order with the streams they had, and ends with
    exactly the numbers of a run that was never interrupted (CPU: deterministic kernels)."""
    from workloads.runtime import LocalRuntime

    config = Config(data_dir=data_dir, cache_dir=gan_cache, train_images=640, epochs=2, sample_epochs=(2,),
                    fid_images=200, batch_size=64, compile=False)
    twin = LocalRuntime(artifact_dir=str(tmp_path / "twin"))
    loop.train_loop(config, twin)

    class Preempted(LocalRuntime):
        def checkpoint_now(self, checkpoint):
            super().checkpoint_now(checkpoint)
            raise _Reclaimed

    batches = 640 // 64
    first = Preempted(artifact_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ckpt"), notice_at=batches + 4)
    with pytest.raises(_Reclaimed):
        loop.train_loop(config, first)
    assert [s["epoch"] for s in first.steps] == [1]  # epoch 2 was cut after its 4th batch
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert state["position"]["epoch"] == 2 and state["position"]["batch"] == 4 and state["step"] == batches + 4
    resumed = LocalRuntime(artifact_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ckpt"))
    loop.train_loop(config, resumed)
    assert [s["epoch"] for s in resumed.steps] == [2]
    for key in ("loss_d", "loss_g", "d_x", "d_g_z", "fid", "class_coverage"):
        assert resumed.steps[0][key] == twin.steps[1][key], key  # bit for bit


def test_epoch_sampler_orders_by_seed_and_epoch_and_resumes_mid_epoch():
    from workloads.runtime import EpochSampler

    def order(seed, epoch, world=1, start=0, n=100, batch=8):
        ranks = [EpochSampler(n, batch // world, seed, r, world) for r in range(world)]
        for s in ranks:
            s.set_epoch(epoch, start)
        per = [list(s) for s in ranks]
        assert len({len(p) for p in per}) == 1  # every rank as many batches (DDP)
        step = batch // world  # interleave ranks' slices back into global batches
        return [i for b in range(len(per[0]) // step) for p in per for i in p[b * step:(b + 1) * step]]

    assert order(1, 1) != order(2, 1) and order(1, 1) != order(1, 2)  # seeds and epochs differ
    assert order(1, 1) == order(1, 1, world=2) == order(1, 1, world=4)  # one global order at any world size
    assert order(1, 3, world=2, start=5) == order(1, 3)[5 * 8:]  # a resume continues the epoch
    assert len(order(1, 1)) == 96 and len(set(order(1, 1))) == 96  # drop_last: 12 whole batches, no repeats


def test_train_keeps_the_best_and_the_latest_checkpoint(ray_session, data_dir, gan_cache, tmp_path):
    """Retention (Scaling.keep_best, default 1): a Train trial keeps its best checkpoint by the selection
    metric (val_fid, measured at the sample epochs) and its latest, which a resume starts from; the
    others are deleted as training goes."""
    import json

    keep_best = 1
    code = main(["run", "gan", "--results", str(tmp_path), "--data-dir", data_dir, "--set", f"cache_dir={gan_cache}",
                 "--set", "train_images=256", "--set", "fid_images=64", "--set", "epochs=4",
                 "--set", "sample_epochs=1,2", "--set", f"keep_best={keep_best}", "--no-dashboard"])
    assert code == 0
    steps = pd.read_parquet(tmp_path / "gan" / "steps.parquet").set_index("epoch")
    measured = steps["val_fid"].dropna()
    assert sorted(measured.index) == [1, 2, 4]  # the sample epochs and the last
    kept = sorted(json.loads(p.read_text())["epoch"] for p in (tmp_path / "_ray").glob("*/checkpoint_*/report.json"))
    best = int(measured.idxmin())
    assert kept == sorted({best, 4}), (kept, measured.to_dict())


def test_checkpoint_scores_rank_measured_epochs_by_the_selection_metric():
    """What ranks Train checkpoints: higher is better whatever the metric's mode; an epoch that did not
    measure it ranks below every measured one, with a score that survives Train's saved state."""
    from pydantic import TypeAdapter

    from orchestrator.engine.actors import SCORE_KEY, UNMEASURED, checkpoint_config, checkpoint_score

    assert checkpoint_score({"val_fid": 120.0}, ("val_fid", "min")) > checkpoint_score({"val_fid": 130.0}, ("val_fid", "min"))
    assert checkpoint_score({"val_rsum": 2.0}, ("val_rsum", "max")) > checkpoint_score({"val_rsum": 1.0}, ("val_rsum", "max"))
    for unmeasured in ({}, {"val_fid": None}, {"val_fid": float("nan")}, {"val_fid": float("inf")}):
        assert checkpoint_score(unmeasured, ("val_fid", "min")) == UNMEASURED < checkpoint_score({"val_fid": 1e9}, ("val_fid", "min"))
    # Train saves its checkpoint manager's state with pydantic (a resumed run reloads it): -inf would come back null
    assert TypeAdapter(float).validate_json(TypeAdapter(float).dump_json(UNMEASURED)) == UNMEASURED
    best = checkpoint_config(2)
    assert (best.num_to_keep, best.checkpoint_score_attribute, best.checkpoint_score_order) == (2, SCORE_KEY, "max")
    assert checkpoint_config(0).num_to_keep == 1 and checkpoint_config(0).checkpoint_score_attribute is None
    assert checkpoint_config(-1).num_to_keep is None  # every one
