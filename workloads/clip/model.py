"""CLIP: two encoders, two projection heads into one space, a learnable temperature, symmetric InfoNCE.

Unlike the widely copied tutorial this study started from (loss on unnormalised embeddings with soft
targets, known to collapse), embeddings are L2-normalised and each caption's target is its own image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout -> residual -> LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.project(x)  # (B, out)
        x = self.dropout(self.fc(F.gelu(projected)))
        return self.norm(x + projected)


def pool_text(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) token states -> (B, H): the first token, or the mean over real tokens."""
    if how == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class CLIP(nn.Module):
    def __init__(self, image_encoder: nn.Module | None, text_encoder: nn.Module | None, image_dim: int,
                 text_dim: int, projection_dim: int, dropout: float, temperature_init: float,
                 temperature_max: float, text_pooling: str) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder  # None: features come precomputed
        self.image_head = ProjectionHead(image_dim, projection_dim, dropout)
        self.text_head = ProjectionHead(text_dim, projection_dim, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(temperature_init)))
        self.max_log_scale = math.log(temperature_max)
        self.text_pooling = text_pooling

    def scale(self) -> torch.Tensor:
        # Not clamped here: above the cap a clamp in forward has zero gradient, so the scale could
        # never come back down; clamp_scale_() caps it after each optimizer step, as open_clip does.
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Cap the temperature at temperature_max (and keep it >= 1), in place."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) -> (B, image_dim); NHWC like the encoder's weights (see loop.build)
        return self.image_encoder(images.contiguous(memory_format=torch.channels_last))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_text(hidden, attention_mask, self.text_pooling)  # (B, text_dim)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features), dim=-1)  # (B, projection_dim), unit norm

    def embed_texts(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features), dim=-1)

    def forward(self, images=None, input_ids=None, attention_mask=None, image_features=None, text_features=None):
        """Raw inputs or precomputed features -> (image_emb, text_emb, scale). Everything goes through
        here during training so that DDP sees one forward per backward."""
        if image_features is None:
            image_features = self.image_features(images)
        if text_features is None:
            text_features = self.text_features(input_ids, attention_mask)
        return self.embed_images(image_features), self.embed_texts(text_features), self.scale()


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the (B, B) similarity matrix; pair i's target is i. Call it in
    fp32, outside any bf16 autocast: there the matmul would round the logits back to bf16, whose
    8-bit mantissa spaces values near scale 100 by 0.5, coarser than the differences that matter."""
    logits = scale * image_emb @ text_emb.T  # (B_image, B_text)
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
