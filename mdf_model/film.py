"""FiLM from the language model back into the U-Net.

The pooled MLLM hidden state of the prompt gives, per skip level, a channel-wise scale and shift
that are applied to the U-Net skips before its decoder: ``skip * gamma + beta``. The heads
predict ``gamma - 1`` and ``beta`` from zero-initialised weights, so at initialisation
gamma = 1 and beta = 0 exactly and the U-Net behaves as if FiLM were not there, while the
gradient with respect to the head weights is not zero and FiLM starts learning at once.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SkipFiLM"]


class SkipFiLM(nn.Module):
    def __init__(self, hidden_size: int, channels: list[int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, 2 * c) for c in channels)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, pooled: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """pooled (B, hidden); skips (B, C_l, H_l, W_l) -> modulated skips, same shapes."""
        context = self.norm(pooled)
        modulated = []
        for head, skip in zip(self.heads, skips, strict=True):
            delta_gamma, beta = head(context).to(skip.dtype)[..., None, None].chunk(2, dim=1)
            modulated.append(skip * (1 + delta_gamma) + beta)
        return modulated
