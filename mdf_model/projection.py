"""Skip projection: U-Net skip features to tokens of the language model's width.

Each skip level is cut into a ``grid x grid`` set of patches, whatever its resolution, so every
level contributes the same number of tokens and the token count does not grow with the U-Net
input size (4 levels x 8 x 8 = 256 tokens for the 11B preset). Inside a patch, the features are
average-pooled to ``pool x pool`` cells and flattened, keeping some intra-patch layout without
the parameter cost of a full-resolution patch embedding (a 32x32 patch of the 64-channel level
at width 4096 would need 268 M weights; with pool 2 all four levels need 30 M). A learned level
embedding and a learned 2-D (row + column) position embedding tell the tokens apart.

Before the projection every patch feature is standardised over the batch and the patches
(batch normalisation; running statistics at inference). U-Net skips are post-ReLU residual
sums: most of their magnitude is the same for every fundus photograph (shared anatomy, channel
offsets), and the part that differs between images, where the disease shows, was 2-20% of it
in the untrained tiny model. Projected as it is, that part is a small ripple on a constant:
gradient steps mostly move the constant, and training learnt to ignore the image (the answer
stayed at chance on images alone). Standardised, each feature varies between images at unit
scale, which is what a linear probe on the same pooled features needs to separate the classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SkipProjection"]


class SkipProjection(nn.Module):
    def __init__(self, channels: list[int], hidden_size: int, *, grid: int, pool: int) -> None:
        super().__init__()
        self.grid = grid
        self.pool = pool
        self.standardise = nn.ModuleList(nn.BatchNorm1d(c * pool * pool) for c in channels)
        self.proj = nn.ModuleList(nn.Linear(c * pool * pool, hidden_size) for c in channels)
        self.norm = nn.LayerNorm(hidden_size)
        self.level_embedding = nn.Parameter(torch.randn(len(channels), hidden_size) * 0.02)
        self.row_embedding = nn.Parameter(torch.randn(grid, hidden_size) * 0.02)
        self.col_embedding = nn.Parameter(torch.randn(grid, hidden_size) * 0.02)

    @property
    def tokens_per_image(self) -> int:
        return len(self.proj) * self.grid * self.grid

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_l, H_l, W_l) per level -> (B, levels * grid * grid, hidden)."""
        position = (self.row_embedding[:, None] + self.col_embedding[None, :]).flatten(0, 1)
        tokens = []
        for level, (skip, standardise, proj) in enumerate(
            zip(skips, self.standardise, self.proj, strict=True)
        ):
            cells = F.adaptive_avg_pool2d(skip, self.grid * self.pool)
            patches = standardise(F.pixel_unshuffle(cells, self.pool).flatten(2))
            patches = patches.transpose(1, 2)  # (B, grid^2, C * pool^2)
            tokens.append(self.norm(proj(patches)) + self.level_embedding[level] + position)
        return torch.cat(tokens, dim=1)
