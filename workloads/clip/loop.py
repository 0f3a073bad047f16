"""CLIP training loop: per epoch, train on one random caption per training image, then evaluate
text<->image retrieval on the validation split; at the end, the epoch with the best validation
score (R@1+R@5+R@10 both ways, "rsum") is evaluated once on the test split. The test split never
chooses anything. Without a validation split (flickr8k_subset) the last epoch is the one tested, and
the rows say so. With both encoders frozen, features are computed once per encoder (features.py),
cached on disk, and only the heads (and temperature) train.

Knows nothing of Ray: `runtime` prepares the model (DDP under Ray Train), reports per-epoch metrics
with a checkpoint and restores the last checkpoint after a failure.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from workloads.clip import data, encoders, features
from workloads.clip import images as images_mod
from workloads.clip.config import Config
from workloads.clip.metrics import retrieval_metrics
from workloads.clip.model import CLIP, clip_loss
from workloads.common import atomic_path, bf16_autocast, uses_bf16
from workloads.runtime import EpochSampler, RankRNG, gather_objects, maybe_fail, unwrap


def build(config: Config) -> tuple[CLIP, object, tuple, tuple]:
    """(model, tokenizer, mean, std). Frozen encoders are kept but their weights never train."""
    # a stream per encoder: a random-init encoder's weights depend on the seed alone, not on what was
    # built before it (its cached features are keyed by the encoder, not the pair: features.py)
    torch.manual_seed(config.seed)
    image = encoders.build_image_encoder(config.image_model, config.pretrained, config.image_weights)
    torch.manual_seed(config.seed + 1)
    text = encoders.build_text_encoder(config.text_model, config.pretrained, config.text_layers, config.text_width)
    torch.manual_seed(config.seed + 2)  # the heads
    tokenizer = encoders.build_tokenizer(config.text_model, config.tokenizer)
    mean, std = encoders.image_normalisation(image, config.image_mean, config.image_std)
    # NHWC weights (inputs follow in CLIP.image_features): oneDNN's and cuDNN's fast conv layout. Measured
    # here on 2 CPU cores: EfficientNet-Lite0 features 1.8x faster, training steps 1.55x (ResNet-18 1.2x),
    # features equal to 5e-6.
    image.to(memory_format=torch.channels_last)
    model = CLIP(image, text, image.num_features, text.config.hidden_size, config.projection_dim, config.dropout,
                 config.temperature_init, config.temperature_max, config.text_pooling)
    image.requires_grad_(config.train_image_encoder)
    text.requires_grad_(config.train_text_encoder)
    return model, tokenizer, mean, std


def optimizer(model: CLIP, config: Config) -> torch.optim.AdamW:
    """AdamW with one learning rate per part: heads (+ temperature), image encoder, text encoder.
    Weight decay only on weight matrices and kernels (ndim >= 2), as open_clip does: never on
    biases, norm gains and the logit scale (decaying the scale pulls the temperature towards 1)."""
    parts = [([*model.image_head.parameters(), *model.text_head.parameters(), model.logit_scale], config.head_lr)]
    if config.train_image_encoder:
        parts.append((list(model.image_encoder.parameters()), config.image_lr))
    if config.train_text_encoder:
        parts.append((list(model.text_encoder.parameters()), config.text_lr))
    groups = []
    for params, lr in parts:
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": config.weight_decay},
                   {"params": rest, "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def tokenize(tokenizer, texts: list[str], max_length: int, device) -> dict:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def split_images(config: Config, split, say=None) -> images_mod.ArrayImages:
    """The split's images, decoded once into the cache (uint8, memory-mapped)."""
    return images_mod.ArrayImages(images_mod.image_array(split.root, split.images, config.image_size, config.cache_dir,
                                                         say=say))


def encode_texts(model: CLIP, tokenizer, texts: list[str], max_length: int, device, say=None,
                 autocast=contextlib.nullcontext()) -> torch.Tensor:
    return features.encode_texts(model, lambda t: tokenize(tokenizer, t, max_length, device), texts, say=say,
                                 autocast=autocast)




def frozen_features(config: Config, model: CLIP, tokenizer, splits: dict, normalise, device, runtime) -> dict:
    """Frozen encoders: {split: (image features, caption features)}, from the per-encoder cache
    (rank 0 extracts what is missing; the other ranks read its files once it is done)."""
    say = getattr(runtime, "say", None)
    bf16 = uses_bf16(device, config.amp)  # ~2x faster extraction; part of the cache key
    autocast = bf16_autocast(device, bf16)

    def prefixed(encoder: str, name: str):  # "efficientnet-lite0, train: images 640/3000 (55/s, ~43 s left)"
        where = f"{encoder.removeprefix('pkg:')}, {name}"
        return say and (lambda line, progress=None: say(f"{where}: {line}", progress=progress and (
            f"{where}: {progress[0]}", *progress[1:])))

    def load(name, split, compute: bool) -> tuple:
        image_say, text_say = prefixed(config.image_model, name), prefixed(config.text_model, name)

        def images():
            if image_say:
                image_say(f"decoding {len(split.images)} images at {config.image_size} px (once per cache), then "
                          f"extracting features{' in bf16' if bf16 else ''}")
            return features.encode_images(unwrap(model), split_images(config, split, image_say), normalise, say=image_say,
                                          autocast=autocast)

        return (features.cached("image", features.image_key(config, split, bf16), compute and images, image_say),
                features.cached("text", features.text_key(config, split, bf16), compute and (
                    lambda: encode_texts(unwrap(model), tokenizer, split.captions, config.max_length, device, text_say,
                                         autocast)), text_say))

    if runtime.is_rank_zero:
        unwrap(model).eval()
        out = {name: load(name, split, compute=True) for name, split in splits.items()}
    runtime.barrier()
    return out if runtime.is_rank_zero else {name: load(name, split, compute=False) for name, split in splits.items()}


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, differentiably (global negatives for the contrastive loss)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(t))
    return t


def train_step(model, opt, inputs: dict, autocast=contextlib.nullcontext()) -> torch.Tensor:
    """One optimisation step on this rank's batch, with every rank's embeddings as negatives: the
    (B_global, B_global) loss is the same on every rank; gradients reach this rank's embeddings
    through the differentiable all_gather, summed over ranks, and DDP averages them, so a step of
    R ranks on B/R pairs each equals one step of one process on all B (tests/test_ddp.py)."""
    with autocast:  # encoders and heads in bf16 on GPU
        image_emb, text_emb, scale = model(**inputs)
    # the loss in fp32, outside autocast (see clip_loss)
    loss = clip_loss(_gather(image_emb.float()), _gather(text_emb.float()), scale.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    unwrap(model).clamp_scale_()
    return loss


def evaluate(model: CLIP, tokenizer, config: Config, split, normalise, device, feats: tuple | None) -> tuple[dict, dict]:
    """Retrieval metrics on `split`, and its embeddings: {image, text (unit vectors), scale}."""
    model = unwrap(model)
    model.eval()
    with torch.no_grad():
        image_f = feats[0] if feats else features.encode_images(model, split_images(config, split), normalise)
        text_f = feats[1] if feats else encode_texts(model, tokenizer, split.captions, config.max_length, device)
        image_emb = model.embed_images(image_f.to(device)).float().cpu()
        text_emb = model.embed_texts(text_f.to(device)).float().cpu()
    metrics = retrieval_metrics((text_emb @ image_emb.T).numpy(), split.image_of)
    return metrics, {"image": image_emb, "text": text_emb, "scale": float(model.scale().detach())}


def rsum(metrics: dict) -> float:
    """R@1 + R@5 + R@10 of both directions: the usual single number for model selection in retrieval."""
    return sum(metrics[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))


class _Training:
    """One trial's training state: splits, model, loader, optimiser, random streams, the epoch
    validation chose so far, logs."""

    def __init__(self, config: Config, runtime) -> None:
        self.config, self.runtime, device = config, runtime, runtime.device
        self.device = device
        self.train, self.val, self.test = data.load_splits(config)
        model, self.tokenizer, mean, std = build(config)
        self.normalise = images_mod.Normalise(mean, std, device)  # uint8 (B, H, W, 3) -> normalised float on the device
        self.counts = {
            "image_params": sum(p.numel() for p in model.image_encoder.parameters()),
            "text_params": sum(p.numel() for p in model.text_encoder.parameters()),
            "head_params": sum(p.numel() for p in [*model.image_head.parameters(), *model.text_head.parameters()]) + 1,
        }
        model.to(device)
        splits = {"train": self.train, "test": self.test, **({"val": self.val} if self.val is not None else {})}
        self.feats = (frozen_features(config, model, self.tokenizer, splits, self.normalise, device, runtime)
                      if config.frozen else {})
        self.prompt_features = None
        if self.feats:  # only heads train: the encoders leave the model (and DDP)
            self.prompt_features = encode_texts(model, self.tokenizer, list(config.prompts), config.max_length, device)
            model.image_encoder = model.text_encoder = None
            self.pairs = data.Pairs(self.train, self.feats["train"][0], config.seed)
        else:
            self.pairs = data.Pairs(self.train, split_images(config, self.train), config.seed)
        per_rank = max(1, config.batch_size // runtime.world_size)
        # the order is a function of (seed, epoch): seeds differ, ranks agree, a resume continues it; the
        # loader's own generator keeps it from drawing a seed from the global RNG (dropout's) per epoch
        self.sampler = EpochSampler(len(self.pairs), per_rank, config.seed, runtime.rank, runtime.world_size)
        self.loader = runtime.prepare_loader(DataLoader(
            self.pairs, batch_size=per_rank, sampler=self.sampler, generator=torch.Generator().manual_seed(config.seed),
            collate_fn=None if self.feats else images_mod.collate, pin_memory=torch.device(device).type == "cuda"))
        self.opt = optimizer(model, config)
        self.rng = RankRNG(config.seed, runtime.rank, device)  # the heads' dropout masks differ per rank
        self.model = runtime.prepare_model(model)
        self.frozen = tuple(prefix for prefix, trains in (("image_encoder.", config.train_image_encoder),
                                                          ("text_encoder.", config.train_text_encoder)) if not trains)
        self.autocast = bf16_autocast(device, config.amp)  # the one bf16 policy (common.uses_bf16)
        self.best = {"epoch": 0, "score": float("-inf"), "model": None}  # the epoch validation chose so far
        self.start_epoch, self.state, self.last, self.writer = 1, None, {}, None
        self.position = None  # (epoch, batches done, loss sum, images) of a checkpoint saved mid-epoch
        self.started = time.perf_counter()

    def trainable(self) -> dict:
        """What a checkpoint needs of the model (frozen encoders never change)."""
        return {k: v.detach().cpu().clone() for k, v in unwrap(self.model).state_dict().items()
                if not k.startswith(self.frozen)}

    def load_trainable(self, saved: dict) -> None:
        """Load what trainable() saved: whole, or the trial fails with one line. Missing may be only the
        frozen encoders (deliberately not saved); a checkpoint of other code never loads in part."""
        result = unwrap(self.model).load_state_dict(saved, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self.frozen)]  # frozen: () when none
        if missing or result.unexpected_keys:
            what = (f"missing {len(missing)} ({', '.join(missing[:3])}...)" if missing else "") + \
                   (f" unexpected {len(result.unexpected_keys)} ({', '.join(result.unexpected_keys[:3])}...)"
                    if result.unexpected_keys else "")
            raise RuntimeError(f"the checkpoint does not fit this CLIP model ({what.strip()}): it was saved by "
                               "other code or another config; rerun with --fresh")

    def restore(self) -> None:
        state = self.state = self.runtime.restore()
        if state is not None:
            self.load_trainable(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.start_epoch = state["epoch"] + 1
            self.best = state.get("best", self.best)
            self.last = dict(state.get("metrics", {}))
            self.position = state.get("position")  # saved mid-epoch: that epoch goes on from its next batch
            if len(state.get("rng_by_rank", ())) == self.runtime.world_size:
                self.rng.load(state["rng_by_rank"][self.runtime.rank])
        if self.runtime.is_rank_zero:  # loss, temperature and val recall per epoch; after a resume, a failed
            from torch.utils.tensorboard import SummaryWriter  # attempt's events past the checkpoint are dropped

            self.writer = SummaryWriter(str(Path(self.runtime.artifact_dir) / "tensorboard"),
                                        purge_step=self.start_epoch if self.start_epoch > 1 else None)

    def train_epoch(self, epoch: int) -> dict:
        config, device, model = self.config, self.device, self.model
        self.pairs.epoch = epoch  # a different caption per image each epoch
        done, total, seen, before = 0, 0.0, 0, 0.0  # batches, loss sum, images, seconds: after a mid-epoch resume, so far
        if self.position is not None and self.position["epoch"] == epoch:
            done, total, seen = self.position["batch"], self.position["loss_sum"], self.position["seen"]
            before = self.position.get("seconds", 0.0)
        self.position = None
        self.sampler.set_epoch(epoch, done)
        unwrap(model).train()
        for module in (unwrap(model).image_encoder, unwrap(model).text_encoder):
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                module.eval()  # a frozen encoder keeps its BatchNorm statistics and no dropout
        epoch_start = time.perf_counter() - before  # the epoch's time includes its part before the notice
        for i, (images, caption_ids) in enumerate(self.loader, start=done + 1):
            if self.feats:
                inputs = {"image_features": images.to(device),
                          "text_features": self.feats["train"][1][caption_ids.cpu()].to(device)}
            else:
                texts = [self.train.captions[i] for i in caption_ids.tolist()]
                inputs = {"images": self.normalise(images), **tokenize(self.tokenizer, texts, config.max_length, device)}
            loss = train_step(model, self.opt, inputs, self.autocast)
            total += float(loss.detach()) * len(images)
            seen += len(images)
            maybe_fail(config.fail_at_epoch, epoch, self.runtime)
            if self.runtime.preemption_notice():  # this node goes soon: keep everything up to this step
                self.save_position({"epoch": epoch, "batch": i, "loss_sum": total, "seen": seen,
                                    "seconds": time.perf_counter() - epoch_start})
        seconds = time.perf_counter() - epoch_start
        return {"epoch": epoch, "loss": total / max(seen, 1), "images_per_s": seen * self.runtime.world_size / seconds,
                "epoch_time_s": seconds, "wall_time_s": time.perf_counter() - self.started,
                "temperature": float(unwrap(model).scale().detach())}

    def save_position(self, position: dict) -> None:
        """A checkpoint in the middle of an epoch (every rank calls): a resume trains that epoch's
        remaining batches, in the order they had, with the streams they had."""
        rng_by_rank = gather_objects(self.rng.state())
        checkpoint = None
        if self.runtime.is_rank_zero:
            checkpoint = {"model": self.trainable(), "optimizer": self.opt.state_dict(), "epoch": position["epoch"] - 1,
                          "rng_by_rank": rng_by_rank, "best": self.best, "metrics": self.last, "position": position}
        self.runtime.checkpoint_now(checkpoint)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Rank 0 validates (the test split chooses nothing) and checkpoints; every rank reports."""
        checkpoint = None
        if self.runtime.is_rank_zero and self.val is not None:
            retrieval, _ = evaluate(self.model, self.tokenizer, self.config, self.val, self.normalise, self.device,
                                    self.feats.get("val"))
            metrics.update({f"val_{k}": v for k, v in retrieval.items()}, val_rsum=rsum(retrieval))
            if metrics["val_rsum"] > self.best["score"]:
                self.best = {"epoch": epoch, "score": metrics["val_rsum"], "model": self.trainable(),
                             "metrics": dict(metrics)}
        # the streams as the next epoch finds them, after validation (whatever it might draw): a resume
        # continues them exactly (tests/test_clip.py: a crash and resume at 2 workers vs its twin)
        rng_by_rank = gather_objects(self.rng.state())
        if self.runtime.is_rank_zero:
            checkpoint = {"model": self.trainable(), "optimizer": self.opt.state_dict(), "epoch": epoch,
                          "rng_by_rank": rng_by_rank, "best": self.best, "metrics": metrics}
            for tag, key in (("Loss/train", "loss"), ("Temperature", "temperature"), ("Val/t2i_r10", "val_t2i_r10"),
                             ("Val/i2t_r10", "val_i2t_r10"), ("Val/rsum", "val_rsum")):
                if key in metrics:
                    self.writer.add_scalar(tag, metrics[key], epoch)
            self.writer.flush()
        self.runtime.report(metrics, checkpoint=checkpoint)
        self.last = metrics

    def final_row(self) -> tuple[dict, list]:
        """Rank 0: the chosen epoch's row (its loss, its val_ metrics) with its test metrics, and the prompts' rows."""
        config, test, best = self.config, self.test, self.best
        if best["model"] is not None:  # the epoch validation chose
            self.load_trainable(best["model"])
        selected = best["epoch"] if best["model"] is not None else config.epochs
        retrieval, embeddings = evaluate(self.model, self.tokenizer, config, test, self.normalise, self.device,
                                         self.feats.get("test"))
        final = {k: v for k, v in best.get("metrics", self.last).items() if k not in ("epoch_time_s", "wall_time_s")}
        final.update(**retrieval, **self.counts, pair=config.pair, train_time_s=time.perf_counter() - self.started,
                     world_size=self.runtime.world_size, resumed_from_epoch=self.state["epoch"] if self.state else 0,
                     test_images=len(test.images), train_images=len(self.train.images),
                     val_images=len(self.val.images) if self.val is not None else 0, selected_epoch=selected,
                     selected_on="val rsum" if self.val is not None else "last epoch (no val split)",
                     bf16=uses_bf16(self.device, config.amp),  # bf16 forwards (features or training)
                     temperature=embeddings["scale"])
        out = Path(self.runtime.artifact_dir)
        final["embeddings_path"] = str(save_embeddings(out / "test_embeddings.npz", embeddings, test))
        rows = write_prompts(self.model, self.tokenizer, config, test, embeddings["image"], self.prompt_features,
                             self.device, out)
        for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"):  # once, at the chosen epoch
            self.writer.add_scalar(f"Test/{key}", retrieval[key], selected)
        self.writer.close()
        return final, rows


def train_loop(config: Config, runtime) -> None:
    run = _Training(config, runtime)
    run.restore()
    for epoch in range(run.start_epoch, config.epochs + 1):
        run.end_epoch(epoch, run.train_epoch(epoch))
    final, rows = run.final_row() if runtime.is_rank_zero else ({}, [])
    runtime.report(rows if runtime.is_rank_zero else {}, table="prompts")
    runtime.report(final, final=True)


def save_embeddings(path: Path, embeddings: dict, split) -> Path:
    """The test split's embeddings, to re-analyse without retraining: image (I, D) and text (T, D)
    unit vectors, image_of (T,) the image index of each caption, image names, the logit scale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, image=embeddings["image"].numpy(), text=embeddings["text"].numpy(),
                            image_of=np.asarray(split.image_of), images=np.asarray(split.images),
                            scale=np.float32(embeddings["scale"]))
    return path


def write_prompts(model, tokenizer, config: Config, test, image_emb: torch.Tensor, prompt_features, device,
                  out_dir: Path) -> dict:
    """Top 9 test images per prompt: one captioned 3x3 grid PNG each, and the rows of the prompts table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    model = unwrap(model)
    model.eval()
    if prompt_features is None:
        prompt_features = encode_texts(model, tokenizer, list(config.prompts), config.max_length, device)
    with torch.no_grad():
        prompt_emb = model.embed_texts(prompt_features.to(device)).float().cpu()
    scores = prompt_emb @ image_emb.T  # (P, I) cosine similarities
    rows: dict[str, list] = {"pair": [], "prompt": [], "rank": [], "image": [], "score": [], "grid": []}
    for p, prompt in enumerate(config.prompts):
        top = torch.topk(scores[p], k=min(9, scores.shape[1]))
        grid = out_dir / "prompts" / f"{re.sub(r'[^a-z0-9]+', '_', prompt.lower()).strip('_')}.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(3, 3, figsize=(7.5, 8))
        for ax in axes.flat:
            ax.axis("off")
        for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            name = test.images[index]
            with Image.open(test.root / name) as im:
                axes.flat[rank - 1].imshow(im.convert("RGB"))
            axes.flat[rank - 1].set_title(f"#{rank}  {score:.3f}", fontsize=9)
            for key, value in zip(rows, (config.pair, prompt, rank, name, score, str(grid))):
                rows[key].append(value)
        fig.suptitle(f'"{prompt}"\n{config.pair}', fontsize=11)
        fig.tight_layout()
        with atomic_path(grid) as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
    return {k: np.asarray(v) for k, v in rows.items()}


def preflight(config: Config, say=None) -> None:
    """Before Ray starts: transformers can build the text model here (on the meta device), the data
    is readable and the encoders and tokenizer can be built offline (quick: nothing to say)."""
    encoders.check_text_model(config.text_model, config.text_layers, config.text_width)
    data.check_images(data.load_splits(config))
    encoders.check_available(config.image_model, config.text_model, config.pretrained)
    encoders.build_tokenizer(config.text_model, config.tokenizer)
