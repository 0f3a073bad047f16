"""GAN config: every default of the study once. No torch here (the CLI imports it for `list`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    latent_dim: int = 100  # z ~ N(0, I) of this size
    batch_size: int = 64  # per optimisation step, over all workers together
    lr: float = 1e-4  # Adam, both networks
    beta1: float = 0.5  # Adam beta1 (DCGAN's choice)
    beta2: float = 0.999  # Adam beta2
    epochs: int = 50  # passes over the training set
    sample_epochs: tuple[int, ...] = (10, 30, 50)  # epochs that save a sample grid and compute the FID
    seed: int = 42  # weights, fixed noise and shuffling
    leak: float = 0.3  # LeakyReLU slope, both networks
    dropout: float = 0.3  # discriminator dropout
    train_images: int = 0  # use the first N training images (0: all 60000)
    fid_images: int = 2000  # generated images per FID, and test images of each reference half (<= 5000)
    data_dir: str = ""  # folder holding FashionMNIST/ ("" -> $ORCHESTRATOR_DATA_DIR, else download)
    cache_dir: str = ""  # extracted data and the cached FID classifier ("" -> ~/.cache/orchestrator)
    channels_last: bool = False  # G, D and batches in NHWC (cuDNN's fast conv layout); measure before turning on
    amp: bool = False  # bf16 autocast of the forwards (losses stay fp32) on CUDA or a CPU with native bf16; else fp32
    compile: bool = False  # torch.compile G and D (worth it only for long runs: compiling takes minutes)
    log_every: int = 50  # steps between TensorBoard writes of the per-step losses (one GPU->host sync each)
    fail_at_epoch: int = 0  # test hook: rank 0 crashes once in the middle of this epoch (0: never)

    def __post_init__(self) -> None:
        for name in ("latent_dim", "batch_size", "epochs", "fid_images", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.fid_images > 5000:  # quality.HALF: each FID's reference is one half of the 10000 test images
            raise ValueError(f"fid_images must be <= 5000 (each half of the FashionMNIST test split), got {self.fid_images}")
        if self.train_images < 0:
            raise ValueError(f"train_images must be >= 0, got {self.train_images}")
        if any(e <= 0 for e in self.sample_epochs):
            raise ValueError(f"sample_epochs must be positive, got {self.sample_epochs}")
