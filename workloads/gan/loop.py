"""The study's GAN training loop: one D step then one G step per batch, BCE with logits.

Knows nothing of Ray: `runtime` prepares models/loaders (DDP under Ray Train), reports per-epoch
metrics with a checkpoint, and restores the last checkpoint after a failure.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workloads.common import bf16_autocast, save_grid
from workloads.gan import data, quality
from workloads.gan.config import Config
from workloads.gan.models import Discriminator, Generator, init_weights
from workloads.runtime import RankRNG, gather_objects, maybe_fail, reduce_mean, unwrap

FIXED_NOISE = 64  # the 8x8 sample grid


def build_models(config: Config) -> tuple[Generator, Discriminator]:
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    g, d = Generator(config.latent_dim, config.leak), Discriminator(config.leak, config.dropout)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


@torch.no_grad()
def sample(g: nn.Module, n: int, latent_dim: int, seed: int, device) -> torch.Tensor:
    """n images from G in eval mode (BatchNorm running stats), reproducible from `seed`.

    Runs the module inside any DDP wrapper: the wrapper's forward broadcasts buffers, a collective
    that would deadlock when rank 0 alone samples."""
    g = unwrap(g)
    was_training = g.training
    g.eval()
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    out = torch.cat([g(chunk) for chunk in z.split(500)]).cpu()
    g.train(was_training)
    return out


def _flush_losses(writer, pending: list, last_step: int) -> None:
    """Write buffered per-step losses (ending at `last_step`) to TensorBoard with one device->host copy."""
    if not pending:
        return
    values = torch.stack(pending).cpu().tolist()
    for i, (loss_d, loss_g) in enumerate(values):
        writer.add_scalar("Loss/Discriminator", loss_d, last_step - len(values) + 1 + i)
        writer.add_scalar("Loss/Generator", loss_g, last_step - len(values) + 1 + i)
    pending.clear()


def gan_step(g, d, opt_g, opt_d, real: torch.Tensor, z: torch.Tensor, bce,
             autocast=contextlib.nullcontext()) -> tuple:
    """One D step then one G step on this rank's batch; returns (loss_d, loss_g, D's logits on
    [real; fake]). Under DDP each of G and D all-reduces (averages) its own gradients. `autocast`
    covers the forwards; the losses are taken in fp32."""
    b = real.size(0)
    ones, zeros = torch.ones(b, device=real.device), torch.zeros(b, device=real.device)
    with autocast:
        fake = g(z)  # (B, 1, 28, 28)

    # (1) Update D: maximise log D(x) + log(1 - D(G(z))). Real and fake go through D in one
    # forward (D has no BatchNorm, so this equals two passes, and DDP sees one forward per backward).
    with autocast:
        logits = d(torch.cat([real, fake.detach().to(real.dtype)]))
    logits = logits.float()
    loss_d = bce(logits[:b], ones) + bce(logits[b:], zeros)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # (2) Update G: maximise log D(G(z)) (the non-saturating loss). D's gradients from this
    # pass are thrown away at the next D step, so D skips its all-reduce here.
    with (d.no_sync() if hasattr(d, "no_sync") else contextlib.nullcontext()):
        with autocast:
            verdict = d(fake)
        loss_g = bce(verdict.float(), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    opt_g.step()
    return loss_d, loss_g, logits


def train_loop(config: Config, runtime) -> None:
    device = runtime.device
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    images, _ = data.load(config.data_dir, config.cache_dir, train=True, limit=config.train_images)
    per_rank = max(1, config.batch_size // runtime.world_size)  # global batch = batch_size
    loader = DataLoader(TensorDataset(images), batch_size=per_rank, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    loader = runtime.prepare_loader(loader)  # under Ray: DistributedSampler + device placement
    g, d = build_models(config)
    rng = RankRNG(config.seed, runtime.rank, device)  # from here on each rank draws its own noise and dropout
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    g, d = g.to(memory_format=layout), d.to(memory_format=layout)
    g, d = runtime.prepare_model(g), runtime.prepare_model(d)  # two DDP modules, synced separately
    if config.compile:
        g, d = torch.compile(g), torch.compile(d)
    autocast = bf16_autocast(device, config.amp)  # CUDA, or a CPU with native bf16; else fp32
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    bce = nn.BCEWithLogitsLoss()

    start_epoch, step, last = 1, 0, {}
    state = runtime.restore()
    if state is not None:  # resume after a failure: the next epoch after the last checkpoint
        unwrap(g).load_state_dict(state["generator"])
        unwrap(d).load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        for group in [*opt_g.param_groups, *opt_d.param_groups]:  # this config's lr, not the checkpoint's: under
            group["lr"] = config.lr  # PBT the state may come from another trial, with a perturbed lr
        if len(state.get("rng_by_rank", ())) == runtime.world_size:  # every rank continues its own stream
            rng.load(state["rng_by_rank"][runtime.rank])
        start_epoch, step = state["epoch"] + 1, state["step"]
        last = dict(state.get("metrics", {}))  # a run resumed after its last epoch still has its final metrics

    out_dir = Path(runtime.artifact_dir)
    writer = scorer = None
    if runtime.is_rank_zero:
        from torch.utils.tensorboard import SummaryWriter

        # after a resume, drop events a failed attempt logged past the checkpoint
        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step + 1 if step else None)
        scorer = quality.Scorer(config.data_dir, config.cache_dir, config.fid_images)
    score_epochs = set(config.sample_epochs) | {config.epochs}
    started = time.perf_counter()
    say = getattr(runtime, "say", None)
    if say and start_epoch <= config.epochs:  # the workers are up and the data loaded: say so before the first step line
        say(f"training on {runtime.world_size} worker{'s' * (runtime.world_size > 1)} ({device}): epochs "
            f"{start_epoch}-{config.epochs}, {len(loader)} steps of {config.batch_size} images each"
            f"{f' (resumed after epoch {start_epoch - 1})' if state is not None else ''}")

    for epoch in range(start_epoch, config.epochs + 1):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
        epoch_start = time.perf_counter()
        sums = torch.zeros(5, device=device)  # loss_d, loss_g, D(x), D(G(z)), images
        pending: list[torch.Tensor] = []  # (2,) per step, not yet written to TensorBoard
        said = time.perf_counter()
        for i, (real,) in enumerate(loader, start=1):
            if say and time.perf_counter() - said > 10:  # a progress line every ~10 s within an epoch
                said, done = time.perf_counter(), time.perf_counter() - epoch_start
                say(f"epoch {epoch}/{config.epochs}: step {i}/{len(loader)} (~{done / i * (len(loader) - i):.0f} s left "
                    "in the epoch)", progress=(f"epoch {epoch} steps", i, len(loader)))
            real = real.to(device).contiguous(memory_format=layout)
            b = real.size(0)
            z = torch.randn(b, config.latent_dim, device=device, generator=rng.noise)  # this rank's own noise
            loss_d, loss_g, logits = gan_step(g, d, opt_g, opt_d, real, z, bce, autocast)

            step += 1
            maybe_fail(config.fail_at_epoch, epoch, runtime)
            with torch.no_grad():
                sums += torch.stack([loss_d.detach() * b, loss_g.detach() * b, torch.sigmoid(logits[:b]).sum(),
                                     torch.sigmoid(logits[b:]).sum(), torch.tensor(float(b), device=device)])
            if writer is not None:  # per-step losses stay on the device; one host sync every log_every steps
                pending.append(torch.stack([loss_d.detach(), loss_g.detach()]))
                if len(pending) >= config.log_every:
                    _flush_losses(writer, pending, step)
        if writer is not None:
            _flush_losses(writer, pending, step)

        totals = reduce_mean(sums) * runtime.world_size  # sums over every rank
        seconds = time.perf_counter() - epoch_start
        n = float(totals[4])
        metrics = {
            "epoch": epoch, "loss_d": float(totals[0] / n), "loss_g": float(totals[1] / n),
            "d_x": float(totals[2] / n), "d_g_z": float(totals[3] / n),
            "images_per_s": n / seconds, "epoch_time_s": seconds, "wall_time_s": time.perf_counter() - started,
            "lr": config.lr,  # constant, except under PBT, which perturbs it between epochs
        }
        checkpoint = None
        rng_by_rank = gather_objects(rng.state())  # every rank's streams, into rank 0's checkpoint
        if runtime.is_rank_zero:
            if epoch in score_epochs:
                save_grid(sample(g, FIXED_NOISE, config.latent_dim, config.seed, device),
                          out_dir / "samples" / f"epoch_{epoch:03d}.png")
                metrics.update(scorer.score(sample(g, config.fid_images, config.latent_dim, config.seed + 1, device)))
                writer.add_scalar("Quality/FID", metrics["fid"], step)
            writer.flush()
            checkpoint = {
                "generator": unwrap(g).state_dict(), "discriminator": unwrap(d).state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "epoch": epoch, "step": step, "rng_by_rank": rng_by_rank, "metrics": metrics,
            }
        runtime.report(metrics, checkpoint=checkpoint)
        last = metrics

    if runtime.is_rank_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(unwrap(g).state_dict(), out_dir / "generator.pt")
        torch.save(unwrap(d).state_dict(), out_dir / "discriminator.pt")
        writer.close()
        final = {k: v for k, v in last.items() if k not in ("epoch_time_s", "wall_time_s")}
        final.update(
            train_time_s=time.perf_counter() - started, resumed_from_epoch=state["epoch"] if state else 0,
            epochs_done=config.epochs, generator_path=str(out_dir / "generator.pt"),
            classifier_accuracy=scorer.accuracy, classifier_digest=scorer.digest, world_size=runtime.world_size,
            bf16=not isinstance(autocast, contextlib.nullcontext),  # amp on a device with native bf16
            generator_params=sum(p.numel() for p in g.parameters()),
            discriminator_params=sum(p.numel() for p in d.parameters()),
        )
    else:
        final = {}
    runtime.report(final, final=True)


def preflight(config: Config, say=None) -> None:
    """Before Ray starts: make sure the data is there and the FID classifier is cached (trains it once).
    `say(line, progress=None)`: the caller's terminal (default: print the line)."""
    say = say or (lambda line, progress=None: print(f"[gan] {line}", flush=True))
    data.locate(config.data_dir, config.cache_dir, say=say)
    quality.load_classifier(config.data_dir, config.cache_dir, say=say)
