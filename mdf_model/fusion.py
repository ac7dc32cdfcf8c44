"""Multi-depth scaled cross-attention: U-Net tokens into chosen text decoder layers.

At each fusion layer the text stream attends to the U-Net tokens: queries from the text hidden
states leaving the base layer, keys and values from the U-Net tokens (the paper leaves the sides
open; this is what stock Mllama does with its image tokens). The result is scaled by alpha and
added to the residual stream::

    h <- h + alpha * row_mask * CrossAttention(RMSNorm(h), unet_tokens)

``row_mask`` is Mllama's ``full_text_row_masked_out_mask``: text rows that see no image (padding,
text before ``<|image|>``) get no U-Net information either. alpha = 0 leaves the base model's
output untouched bit for bit.

The fused block runs as a forward hook on the base layer (`register_forward_hook` with kwargs),
so the base model's modules and state_dict keys stay as they are, and it works unchanged inside
``generate()``, which rejects extra keyword arguments. The U-Net tokens reach the hooks as module
state set by `MultiDepthFusion.using` for the duration of one forward or one ``generate()``
call. Their keys and values are computed once per call and layer and reused at every decoding
step, next to Mllama's own cached image keys and values. A hook only runs when its layer runs:
Mllama skips cross-attention layers in text-only calls, and so does the fusion.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MllamaTextConfig
from transformers.models.mllama.modeling_mllama import (
    MllamaCrossAttentionDecoderLayer,
    MllamaTextCrossAttention,
    MllamaTextRMSNorm,
)

from mdf_model.configuration import check_fusion_layers

__all__ = ["MultiDepthFusion", "ScaledCrossAttention"]


class ScaledCrossAttention(nn.Module):
    """One fusion block. Its parameters mirror a Mllama cross-attention layer (``norm`` like the
    layer's input norm, ``attn`` with q/k/v/o projections and q/k norms) so that it can start from
    the base layer's pretrained cross-attention weights."""

    def __init__(self, text_config: MllamaTextConfig, *, alpha: float, learnable: bool) -> None:
        super().__init__()
        self.norm = MllamaTextRMSNorm(text_config.hidden_size, eps=text_config.rms_norm_eps)
        # Used as a parameter container; the attention itself is computed in `forward`.
        self.attn = MllamaTextCrossAttention(text_config)
        initial = torch.tensor([float(alpha)])
        if learnable:
            self.alpha = nn.Parameter(initial)
        else:
            self.register_buffer("alpha", initial, persistent=False)
        self.is_identity = not learnable and alpha == 0.0

    def init_from(self, layer: MllamaCrossAttentionDecoderLayer) -> None:
        self.norm.load_state_dict(layer.input_layernorm.state_dict())
        self.attn.load_state_dict(layer.cross_attn.state_dict())

    def key_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) U-Net tokens -> keys and values, (B, kv_heads, N, head_dim) each."""
        attn = self.attn
        batch, length, _ = tokens.shape
        shape = (batch, length, attn.num_key_value_heads, attn.head_dim)
        key = attn.k_norm(attn.k_proj(tokens).view(shape).transpose(1, 2))
        value = attn.v_proj(tokens).view(shape).transpose(1, 2)
        return key, value

    def forward(
        self,
        hidden: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        row_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The scaled update to add to ``hidden`` (rows, S, D)."""
        attn = self.attn
        rows, length, _ = hidden.shape
        query = attn.q_proj(self.norm(hidden)).view(rows, length, attn.num_heads, attn.head_dim)
        query = attn.q_norm(query.transpose(1, 2))
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scaling, enable_gqa=True)
        out = attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
        if row_mask is not None:
            out = out * row_mask
        return self.alpha * out


class MultiDepthFusion(nn.Module):
    """The fusion blocks of all fusion layers and the hooks that run them."""

    def __init__(
        self,
        text_config: MllamaTextConfig,
        layers: Sequence[int],
        *,
        alpha: float,
        learnable: bool,
    ) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.blocks = nn.ModuleDict(
            {
                str(i): ScaledCrossAttention(text_config, alpha=alpha, learnable=learnable)
                for i in self.layers
            }
        )
        self._tokens: torch.Tensor | None = None
        self._key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def attach(self, decoder_layers: nn.ModuleList, *, init_from_base: bool) -> None:
        """Hook the blocks onto the base model's decoder layers (once, at build time)."""
        cross = [
            i
            for i, layer in enumerate(decoder_layers)
            if isinstance(layer, MllamaCrossAttentionDecoderLayer)
        ]
        check_fusion_layers(self.layers, cross)
        for i in self.layers:
            if init_from_base:
                self.blocks[str(i)].init_from(decoder_layers[i])
            decoder_layers[i].register_forward_hook(
                functools.partial(self._hook, i), with_kwargs=True
            )

    @contextlib.contextmanager
    def using(self, tokens: torch.Tensor) -> Iterator[None]:
        """Fuse ``tokens`` (B, N, D) into every base forward inside the block. The text batch may
        hold several rows per image (label scoring, beams): rows are grouped by image."""
        if self._tokens is not None:
            raise RuntimeError("fusion is already in use by another forward pass")
        self._tokens, self._key_values = tokens, {}
        try:
            yield
        finally:
            self._tokens, self._key_values = None, {}

    def _hook(
        self,
        layer_idx: int,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: torch.Tensor,
    ) -> torch.Tensor | None:
        block = self.blocks[str(layer_idx)]
        if self._tokens is None or block.is_identity:
            return None
        if layer_idx not in self._key_values:
            self._key_values[layer_idx] = block.key_values(self._tokens)
        key, value = self._key_values[layer_idx]
        rows, images = output.shape[0], key.shape[0]
        if rows % images:
            raise RuntimeError(f"{rows} text rows cannot be grouped over {images} images")
        if rows != images:
            key = key.repeat_interleave(rows // images, dim=0)
            value = value.repeat_interleave(rows // images, dim=0)
        row_mask = kwargs.get("full_text_row_masked_out_mask")
        if row_mask is not None:
            row_mask = row_mask[:, 0].to(output.dtype)  # (rows, S, 1)
        return output + block(output, key, value, row_mask)
