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

from workloads.common import atomic_path, bf16_autocast, save_grid, uses_bf16
from workloads.gan import data, quality
from workloads.gan.config import Config
from workloads.gan.models import Discriminator, Generator, init_weights
from workloads.runtime import EpochSampler, RankRNG, gather_objects, maybe_fail, reduce_mean, unwrap

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


class _Training:
    """One trial's training state: data, models, optimisers, random streams, logs (built by setup)."""

    def __init__(self, config: Config, runtime) -> None:
        self.config, self.runtime, self.device = config, runtime, runtime.device
        if torch.device(self.device).type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        images, _ = data.load(config.data_dir, config.cache_dir, train=True, limit=config.train_images)
        per_rank = max(1, config.batch_size // runtime.world_size)  # global batch = batch_size
        # the order is a function of (seed, epoch): seeds differ, ranks agree, a resume continues it
        self.sampler = EpochSampler(len(images), per_rank, config.seed, runtime.rank, runtime.world_size)
        # (its own generator: a DataLoader without one draws a seed from the global RNG per epoch, which
        # a resume mid-epoch would draw twice)
        self.loader = runtime.prepare_loader(DataLoader(TensorDataset(images), batch_size=per_rank, sampler=self.sampler,
                                                        generator=torch.Generator().manual_seed(config.seed)))
        g, d = build_models(config)
        self.rng = RankRNG(config.seed, runtime.rank, self.device)  # from here on each rank draws its own noise, dropout
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        g, d = g.to(memory_format=self.layout), d.to(memory_format=self.layout)
        g, d = runtime.prepare_model(g), runtime.prepare_model(d)  # two DDP modules, synced separately
        self.g, self.d = (torch.compile(g), torch.compile(d)) if config.compile else (g, d)
        self.autocast = bf16_autocast(self.device, config.amp)  # the one bf16 policy (common.uses_bf16)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        self.bce = nn.BCEWithLogitsLoss()
        self.step, self.start_epoch, self.last, self.state = 0, 1, {}, None
        self.position = None  # (epoch, batches done, sums) of a checkpoint saved mid-epoch (a preemption's)
        self.out_dir, self.writer, self.scorer = Path(runtime.artifact_dir), None, None
        self.say = getattr(runtime, "say", None)
        self.started = time.perf_counter()

    def restore(self) -> None:
        """After a failure: the next epoch after the last checkpoint, every rank its own streams."""
        config, state = self.config, self.runtime.restore()
        if state is not None:
            unwrap(self.g).load_state_dict(state["generator"])
            unwrap(self.d).load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            for group in [*self.opt_g.param_groups, *self.opt_d.param_groups]:  # this config's lr, not the
                group["lr"] = config.lr  # checkpoint's: under PBT the state may come from another trial
            self.start_epoch, self.step = state["epoch"] + 1, state["step"]
            self.last = dict(state.get("metrics", {}))  # a run resumed after its last epoch keeps its final metrics
            self.position = state.get("position")  # saved mid-epoch: that epoch goes on from its next batch
        self.state = state
        if self.runtime.is_rank_zero:
            from torch.utils.tensorboard import SummaryWriter

            # after a resume, drop events a failed attempt logged past the checkpoint
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None)
            self.scorer = quality.Scorer(config.data_dir, config.cache_dir, config.fid_images)
        # the streams last: building the scorer draws from the global RNG (its classifier's initial
        # weights), which after the restore would shift every dropout mask of the resumed run
        if state is not None and len(state.get("rng_by_rank", ())) == self.runtime.world_size:
            self.rng.load(state["rng_by_rank"][self.runtime.rank])

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the data: (1) update D, (2) update G per batch (gan_step); the epoch's means."""
        config, device, loader = self.config, self.device, self.loader
        sums = torch.zeros(5, device=device)  # loss_d, loss_g, D(x), D(G(z)), images
        done, before = 0, 0.0  # batches of this epoch already trained, and their seconds (a mid-epoch resume)
        if self.position is not None and self.position["epoch"] == epoch:
            done, before = self.position["batch"], self.position.get("seconds", 0.0)
            if self.runtime.is_rank_zero:  # every rank's sums so far, held once (the epoch's reduce adds them)
                sums = self.position["sums"].to(device)
        self.position = None
        self.sampler.set_epoch(epoch, done)  # a different shuffle every epoch, the same on every rank
        epoch_start = said = time.perf_counter() - before  # the epoch's time includes its part before the notice
        pending: list[torch.Tensor] = []  # (2,) per step, not yet written to TensorBoard
        for i, (real,) in enumerate(loader, start=done + 1):
            if self.say and time.perf_counter() - said > 10:  # a progress line every ~10 s within an epoch
                said, spent, total = time.perf_counter(), time.perf_counter() - epoch_start, self.sampler.batches
                self.say(f"epoch {epoch}/{config.epochs}: step {i}/{total} (~{spent / (i - done) * (total - i):.0f} s "
                         "left in the epoch)", progress=(f"epoch {epoch} steps", i, total))
            real = real.to(device).contiguous(memory_format=self.layout)
            b = real.size(0)
            z = torch.randn(b, config.latent_dim, device=device, generator=self.rng.noise)  # this rank's own noise
            loss_d, loss_g, logits = gan_step(self.g, self.d, self.opt_g, self.opt_d, real, z, self.bce, self.autocast)
            self.step += 1
            maybe_fail(config.fail_at_epoch, epoch, self.runtime)
            with torch.no_grad():
                sums += torch.stack([loss_d.detach() * b, loss_g.detach() * b, torch.sigmoid(logits[:b]).sum(),
                                     torch.sigmoid(logits[b:]).sum(), torch.tensor(float(b), device=device)])
            if self.writer is not None:  # per-step losses stay on the device; one host sync every log_every steps
                pending.append(torch.stack([loss_d.detach(), loss_g.detach()]))
                if len(pending) >= config.log_every:
                    _flush_losses(self.writer, pending, self.step)
            if self.runtime.preemption_notice():  # this node goes soon: keep everything up to this step
                if self.writer is not None:
                    _flush_losses(self.writer, pending, self.step)
                self.save_position(epoch, i, sums, time.perf_counter() - epoch_start)
        if self.writer is not None:
            _flush_losses(self.writer, pending, self.step)
        totals = reduce_mean(sums) * self.runtime.world_size  # sums over every rank
        seconds, n = time.perf_counter() - epoch_start, float(totals[4])
        return {"epoch": epoch, "loss_d": float(totals[0] / n), "loss_g": float(totals[1] / n),
                "d_x": float(totals[2] / n), "d_g_z": float(totals[3] / n), "images_per_s": n / seconds,
                "epoch_time_s": seconds, "wall_time_s": time.perf_counter() - self.started,
                "lr": config.lr}  # constant, except under PBT, which perturbs it between epochs

    def state_dict(self, epoch: int, rng_by_rank: list, metrics: dict) -> dict:
        """Rank 0's checkpoint after `epoch` epochs: weights, optimisers, every rank's streams."""
        return {"generator": unwrap(self.g).state_dict(), "discriminator": unwrap(self.d).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "epoch": epoch, "step": self.step, "rng_by_rank": rng_by_rank, "metrics": metrics}

    def save_position(self, epoch: int, batch: int, sums: torch.Tensor, seconds: float) -> None:
        """A checkpoint in the middle of `epoch`, after `batch` batches (every rank calls): a resume
        trains that epoch's remaining batches, in the order they had, with the streams they had. The
        epoch's sums so far are every rank's (summed here: only rank 0's state is saved)."""
        rng_by_rank = gather_objects(self.rng.state())
        sums = reduce_mean(sums) * self.runtime.world_size  # a collective: every rank is here (the notice is shared)
        checkpoint = None
        if self.runtime.is_rank_zero:
            if self.writer is not None:
                self.writer.flush()
            checkpoint = self.state_dict(epoch - 1, rng_by_rank, self.last)
            checkpoint["position"] = {"epoch": epoch, "batch": batch, "sums": sums.detach().cpu(), "seconds": seconds}
        self.runtime.checkpoint_now(checkpoint)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Rank 0 samples and scores at the sample epochs; every rank reports, rank 0 with a checkpoint."""
        config, checkpoint = self.config, None
        rng_by_rank = gather_objects(self.rng.state())  # every rank's streams, into rank 0's checkpoint
        if self.runtime.is_rank_zero:
            if epoch in set(config.sample_epochs) | {config.epochs}:
                save_grid(sample(self.g, FIXED_NOISE, config.latent_dim, config.seed, self.device),
                          self.out_dir / "samples" / f"epoch_{epoch:03d}.png")
                metrics.update(self.scorer.score(sample(self.g, config.fid_images, config.latent_dim, config.seed + 1,
                                                        self.device)))
                self.writer.add_scalar("Quality/FID", metrics["fid"], self.step)
                self.writer.add_scalar("Quality/val_FID", metrics["val_fid"], self.step)
            self.writer.flush()
            checkpoint = self.state_dict(epoch, rng_by_rank, metrics)
        self.runtime.report(metrics, checkpoint=checkpoint)
        self.last = metrics

    def final_row(self) -> dict:
        """Rank 0: the weights, then the trial's row (its last epoch's metrics and what ran it)."""
        for name, model in (("generator.pt", self.g), ("discriminator.pt", self.d)):
            with atomic_path(self.out_dir / name) as tmp:  # `generate` never loads a torn file
                torch.save(unwrap(model).state_dict(), tmp)
        self.writer.close()
        final = {k: v for k, v in self.last.items() if k not in ("epoch_time_s", "wall_time_s")}
        final.update(
            train_time_s=time.perf_counter() - self.started,
            resumed_from_epoch=self.state["epoch"] if self.state else 0, epochs_done=self.config.epochs,
            generator_path=str(self.out_dir / "generator.pt"), classifier_accuracy=self.scorer.accuracy,
            classifier_digest=self.scorer.digest, world_size=self.runtime.world_size,
            **quality.references(self.config.fid_images),
            bf16=uses_bf16(self.device, self.config.amp),
            generator_params=sum(p.numel() for p in self.g.parameters()),
            discriminator_params=sum(p.numel() for p in self.d.parameters()),
        )
        return final


def _resumed(run: _Training) -> str:
    if run.position is not None:
        return f" (resumed in epoch {run.position['epoch']} after step {run.position['batch']}: a preemption's checkpoint)"
    return f" (resumed after epoch {run.start_epoch - 1})" if run.state is not None else ""


def train_loop(config: Config, runtime) -> None:
    run = _Training(config, runtime)
    run.restore()
    if run.say and run.start_epoch <= config.epochs:  # workers up, data loaded: say so before the first step line
        run.say(f"training on {runtime.world_size} worker{'s' * (runtime.world_size > 1)} ({run.device}): epochs "
                f"{run.start_epoch}-{config.epochs}, {run.sampler.batches} steps of {config.batch_size} images each"
                f"{_resumed(run)}")
    for epoch in range(run.start_epoch, config.epochs + 1):
        run.end_epoch(epoch, run.train_epoch(epoch))
    if runtime.is_rank_zero:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    runtime.report(run.final_row() if runtime.is_rank_zero else {}, final=True)


def preflight(config: Config, say=None) -> None:
    """Before Ray starts: make sure the data is there and the FID classifier is cached (trains it once).
    `say(line, progress=None)`: the caller's terminal (default: print the line)."""
    say = say or (lambda line, progress=None: print(f"[gan] {line}", flush=True))
    data.locate(config.data_dir, config.cache_dir, say=say)
    quality.load_classifier(config.data_dir, config.cache_dir, say=say)
