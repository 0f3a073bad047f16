"""The study's generator and discriminator (28x28x1, latent 100)."""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 100, leak: float = 0.3) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 256 * 7 * 7, bias=False),
            # The study applies BatchNorm2d to this flat (B, 12544) output, which fails as written
            # (BatchNorm2d wants (B, C, H, W)); BatchNorm1d normalises the flat features instead.
            nn.BatchNorm1d(256 * 7 * 7),
            nn.LeakyReLU(leak),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, stride=2, padding=2, output_padding=1, bias=False),  # (B, 128, 14, 14)
            nn.BatchNorm2d(128),
            nn.LeakyReLU(leak),
            nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False),  # (B, 64, 28, 28)
            nn.BatchNorm2d(64),
            nn.LeakyReLU(leak),
            nn.ConvTranspose2d(64, 1, 5, stride=1, padding=2, bias=False),  # (B, 1, 28, 28)
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, 256, 7, 7))  # (B, 100) -> (B, 1, 28, 28)


class Discriminator(nn.Module):
    def __init__(self, leak: float = 0.3, dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, 5, stride=2, padding=2, bias=False),  # (B, 64, 14, 14)
            nn.LeakyReLU(leak),
            nn.Dropout(dropout),
            nn.Conv2d(64, 128, 5, stride=2, padding=2),  # (B, 128, 7, 7)
            nn.LeakyReLU(leak),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(128 * 7 * 7, 1),  # a logit: BCE-with-logits does the sigmoid
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,)


def init_weights(module: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) for conv, transposed conv and linear weights."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
