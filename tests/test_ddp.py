"""What a GPU cluster's DDP would show, caught here with 2 gloo ranks on CPU (real processes and a
real process group, no Ray): one DDP step of 2 ranks on a global batch equals one step of one
process on that batch (CLIP with gathered negatives; the GAN with its batch-norm statistics
all-reduced, as SyncBatchNorm does on CUDA), each rank draws its own noise and dropout from models
that start identical, and a resumed rank continues its own random stream.

Tolerances: SGD, so that a parameter's change is lr x its gradient, and the two sides differ only
by float32 summation order (partial sums of 2 x B/2 terms vs one of B): 1e-5 absolute on weights
of order 0.02-1. (Adam's first step is lr x sign(g): reduction-order noise in a near-zero gradient
would flip whole steps.)
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from workloads.runtime import RankRNG, gather_objects

WORLD = 2


class AllReduceBatchNorm(nn.Module):
    """Batch norm (training mode) whose statistics are summed over every rank with a differentiable
    all_reduce: what torch's SyncBatchNorm does on CUDA (it refuses CPU tensors)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed.nn.functional as dist_fn

        dims = [0, *range(2, x.ndim)]
        count = torch.tensor(float(x.numel() // x.shape[1]))
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count.view(1)])
        if dist.is_initialized():
            stats = dist_fn.all_reduce(stats)
        c = x.shape[1]
        mean, meansq = stats[:c] / stats[-1], stats[c:2 * c] / stats[-1]
        shape = [1, c] + [1] * (x.ndim - 2)
        var = (meansq - mean * mean).clamp(min=0)  # biased, as batch norm normalises with
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, AllReduceBatchNorm(child))
        else:
            sync_batchnorm(child)
    return module


def _gan_step(rank: int, world: int, out: dict) -> None:
    from workloads.gan.config import Config
    from workloads.gan.loop import build_models, gan_step

    g, d = build_models(Config(dropout=0.0))  # identical on every rank (the shared seed)
    g = sync_batchnorm(g)
    real = torch.Generator().manual_seed(1)
    real = torch.rand(64, 1, 28, 28, generator=real) * 2 - 1
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(2))
    part = slice(rank * 64 // world, (rank + 1) * 64 // world)
    if world > 1:
        g, d = nn.parallel.DistributedDataParallel(g), nn.parallel.DistributedDataParallel(d)
    opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
    gan_step(g, d, opt_g, opt_d, real[part], z[part], nn.BCEWithLogitsLoss())
    out["gan_init"] = build_models(Config(dropout=0.0))[0].state_dict()
    out["gan"] = {k: v.detach().clone() for k, v in getattr(g, "module", g).state_dict().items()}
    out["gan_d"] = {k: v.detach().clone() for k, v in getattr(d, "module", d).state_dict().items()}


def _clip_step(rank: int, world: int, out: dict) -> None:
    from workloads.clip.loop import train_step
    from workloads.clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(None, None, 24, 16, 8, 0.0, 1 / 0.07, 100.0, "cls")
    feats = torch.Generator().manual_seed(3)
    image_f, text_f = torch.randn(16, 24, generator=feats), torch.randn(16, 16, generator=feats)
    part = slice(rank * 16 // world, (rank + 1) * 16 // world)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_step(model, opt, {"image_features": image_f[part], "text_features": text_f[part]})
    out["clip"] = {k: v.detach().clone() for k, v in getattr(model, "module", model).state_dict().items()}


def _streams(rank: int, out: dict) -> None:
    from workloads.gan.config import Config
    from workloads.gan.loop import build_models

    g, _ = build_models(Config())
    out["init"] = g.project[0].weight.detach().clone()
    rng = RankRNG(42, rank, "cpu")
    out["fakes"] = g(torch.randn(8, 100, generator=rng.noise)).detach()
    states = gather_objects(rng.state())  # what rank 0 checkpoints
    out["states"] = states
    out["own_state"] = rng.state()
    out["next"] = (torch.randn(4, 100, generator=rng.noise), torch.rand(5))  # noise, then a dropout-like draw
    resumed = RankRNG(42, rank, "cpu")  # a restarted worker: fresh streams, then the checkpoint's
    resumed.load(states[rank])
    out["resumed"] = (torch.randn(4, 100, generator=resumed.noise), torch.rand(5))


def _worker(rank: int, world: int, init: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        out: dict = {}
        _gan_step(rank, world, out)
        _clip_step(rank, world, out)
        _streams(rank, out)
        torch.save(out, f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """(one process's results on the whole batch, [each of 2 gloo ranks' results])."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(WORLD, f"file://{tmp}/pg", str(tmp)), nprocs=WORLD, start_method="spawn")
    single: dict = {}
    with contextlib.ExitStack():
        _gan_step(0, 1, single)
        _clip_step(0, 1, single)
    return single, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("part", ["gan", "gan_d", "clip"])
def test_a_two_rank_step_equals_one_step_on_the_global_batch(ranks, part):
    single, per_rank = ranks
    if part == "gan":  # the step moved the weights (an equivalence of two no-ops would prove nothing)
        assert any(not torch.equal(single["gan"][k], v) for k, v in single["gan_init"].items() if v.is_floating_point())
    for rank in per_rank:  # DDP keeps the ranks identical...
        for name, value in single[part].items():  # ...and equal to the one-process step
            assert torch.allclose(rank[part][name].float(), value.float(), atol=1e-5), (part, name)


def test_models_start_identical_and_ranks_draw_their_own_noise(ranks):
    _, (r0, r1) = ranks
    assert torch.equal(r0["init"], r1["init"])  # same initial weights (shared seed)
    assert not torch.allclose(r0["fakes"], r1["fakes"])  # each rank's fakes are its own: no half-size batch
    assert not torch.allclose(r0["next"][1], r1["next"][1])  # nor the same dropout masks


def test_a_resumed_rank_continues_its_own_random_stream(ranks):
    _, per_rank = ranks
    for r, rank in enumerate(per_rank):  # the checkpoint holds every rank's own streams
        for other, theirs in enumerate(per_rank):
            assert torch.equal(rank["states"][other]["noise"], theirs["own_state"]["noise"]), (r, other)
    for rank in per_rank:
        assert torch.equal(rank["resumed"][0], rank["next"][0]) and torch.equal(rank["resumed"][1], rank["next"][1])


def _cuda_runtime(sync_bn: bool, world_size: int = 2):
    """The Train runtime of rank 0 of a CUDA DDP run, up to the CUDA call: Ray Train's
    prepare_model (DDP wrapping, the move to the GPU) is replaced by a recorder."""
    from orchestrator.engine.actors import _TrainRuntime

    runtime = object.__new__(_TrainRuntime)  # its __init__ asks Ray Train for the context
    runtime.device, runtime.world_size, runtime.sync_bn = torch.device("cuda", 0), world_size, sync_bn
    runtime.cpu_fallback, runtime.software = False, {"sync_bn": False}
    return runtime


@pytest.mark.parametrize("sync_bn,world_size,converted", [(True, 2, True), (False, 2, False), (True, 1, False)])
def test_the_train_runtime_converts_batchnorm_exactly_when_asked(monkeypatch, sync_bn, world_size, converted):
    """Everything up to the CUDA call, on CPU: the runtime the GAN loop gets converts every BatchNorm of
    the generator to SyncBatchNorm over the default (world) process group on multi-GPU DDP with
    Scaling.sync_bn on, and none otherwise; the rows say which."""
    import ray.train.torch

    from workloads.gan.models import Generator

    given = []
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model, **kw: given.append(model) or model)
    runtime = _cuda_runtime(sync_bn, world_size)
    model = runtime.prepare_model(Generator())
    bns = [m for m in Generator().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    syncs = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert given == [model] and runtime.software["sync_bn"] is converted
    assert len(syncs) == (len(bns) if converted else 0) and len(bns) >= 2
    assert all(m.process_group is None for m in syncs)  # None: the default group, every rank
    if converted:
        assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())


def test_the_conversion_keeps_timms_fused_activations_and_the_weights():
    """EfficientNet's BatchNormAct2d (norm + ReLU6): timm's converter keeps the activation that torch's
    would drop; in eval mode (no sync) the converted network computes what the original did."""
    import timm

    from orchestrator.engine.actors import convert_sync_batchnorm

    net = timm.create_model("efficientnet_lite0", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    before = net(x)
    converted = convert_sync_batchnorm(net, torch.device("cuda"), 2, True).eval()
    assert not any(type(m).__name__ == "BatchNormAct2d" for m in converted.modules())
    assert any(type(m).__name__ == "SyncBatchNormAct" for m in converted.modules())
    assert torch.allclose(converted(x), before, atol=1e-5)
    cpu = timm.create_model("efficientnet_lite0", num_classes=0)
    assert convert_sync_batchnorm(cpu, torch.device("cpu"), 2, True) is cpu  # CPU DDP: per-rank statistics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA; this machine has no GPU")
def test_the_runtime_converts_batchnorm_to_syncbatchnorm_on_cuda_ddp():
    from orchestrator.engine.actors import convert_sync_batchnorm

    import timm

    from workloads.gan.models import Generator

    model = convert_sync_batchnorm(Generator(), device=torch.device("cuda"), world_size=2, enabled=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    net = timm.create_model("efficientnet_lite0", num_classes=0).eval()  # BatchNormAct2d: norm + ReLU6
    x = torch.randn(2, 3, 64, 64)
    before = net(x)
    assert torch.allclose(convert_sync_batchnorm(net, torch.device("cuda"), 2, True).cuda()(x.cuda()).cpu(), before, atol=1e-5)
