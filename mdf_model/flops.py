"""Compute per image, from the configuration alone (no weights, no memory).

Counts the multiply-accumulates of matrix products and convolutions as 2 FLOPs each, as
`torch.utils.flop_counter` does (norms, activations and softmax are left out); the test suite
checks the formulas against that counter on the tiny model. The transformer parts follow the
Mllama code: the vision tower always runs the processor's ``max_image_tiles`` tiles (unused tiles
are zero padding but still computed), its sequence is padded to a multiple of 8 per tile, and
every text row recomputes the image keys and values of every cross-attention layer. The U-Net is
counted by running it on the meta device under the flop counter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.mllama.image_processing_mllama import get_optimal_tiled_canvas

from mdf_model.configuration import MDFConfig
from mdf_model.unet import FundusUNet

__all__ = ["FlopEstimate", "estimate_flops"]


@dataclass(frozen=True)
class FlopEstimate:
    """FLOPs of one image's label-scoring pass (``rows`` text rows of ``row_tokens`` tokens)."""

    tiles_used: int
    tiles_computed: int
    rows: int
    row_tokens: int
    vision_tower: float
    projector: float
    text: float
    unet: float
    fusion: float

    @property
    def total(self) -> float:
        return self.vision_tower + self.projector + self.text + self.unet + self.fusion


def _tiles_used(config: MDFConfig, height: int, width: int) -> int:
    vision = config.vision_config
    canvas_h, canvas_w = get_optimal_tiled_canvas(
        height, width, vision["max_num_tiles"], vision["image_size"]
    )
    return int(canvas_h // vision["image_size"]) * int(canvas_w // vision["image_size"])


def _vision_tower(config: MDFConfig, tiles: int) -> float:
    v = config.vision_config
    hidden, patch = v["hidden_size"], v["patch_size"]
    patches = (v["image_size"] // patch) ** 2
    tokens = tiles * (-(-(patches + 1) // 8) * 8)  # class token, padded to a multiple of 8
    per_layer = 2 * tokens * (4 * hidden**2 + 2 * hidden * v["intermediate_size"])
    per_layer += 4 * tokens**2 * hidden
    layers = v["num_hidden_layers"] + v["num_global_layers"]
    return 2 * tiles * patches * 3 * patch**2 * hidden + layers * per_layer


def _image_tokens(config: MDFConfig, tiles: int) -> int:
    v = config.vision_config
    return tiles * ((v["image_size"] // v["patch_size"]) ** 2 + 1)


def _text(config: MDFConfig, rows: int, tokens: int, answer_tokens: int, image: int) -> float:
    t = config.text_config
    hidden, inter = t["hidden_size"], t["intermediate_size"]
    kv_width = t["num_key_value_heads"] * hidden // t["num_attention_heads"]
    mlp = 2 * 3 * hidden * inter * tokens
    cross = len(t["cross_attention_layers"])
    self_layers = t["num_hidden_layers"] - cross
    self_attention = 2 * tokens * (2 * hidden**2 + 2 * hidden * kv_width) + 4 * tokens**2 * hidden
    cross_attention = (
        2 * tokens * 2 * hidden**2  # q, o
        + 2 * image * 2 * hidden * kv_width  # k, v of the image tokens, per row
        + 4 * tokens * image * hidden
    )
    per_row = self_layers * (self_attention + mlp) + cross * (cross_attention + mlp)
    lm_head = 2 * answer_tokens * hidden * t["vocab_size"]
    return rows * (per_row + lm_head)


def _fusion(config: MDFConfig, channels: list[int], rows: int, tokens: int) -> float:
    t = config.text_config
    hidden = t["hidden_size"]
    kv_width = t["num_key_value_heads"] * hidden // t["num_attention_heads"]
    per_level = config.patch_grid**2
    unet_tokens = per_level * len(channels)
    projection = sum(2 * per_level * c * config.patch_pool**2 * hidden for c in channels)
    per_layer = (
        2 * unet_tokens * 2 * hidden * kv_width  # k, v once per image
        + rows * (2 * tokens * 2 * hidden**2 + 4 * tokens * unet_tokens * hidden)
    )
    film = sum(2 * hidden * 2 * c for c in channels)
    return projection + len(config.fusion_layers) * per_layer + film


def _unet(config: MDFConfig) -> tuple[float, list[int]]:
    with torch.device("meta"):
        unet = FundusUNet(
            classes=len(config.seg_classes),
            decoder_channels=config.unet_decoder_channels,
            skip_levels=config.skip_levels,
        )
        pixels = torch.empty(1, 3, config.unet_input_size, config.unet_input_size)
    with FlopCounterMode(display=False) as counter:
        features = unet.encode(pixels)
        unet.decode(features, unet.skips(features))
    return float(counter.get_total_flops()), unet.skip_channels


def estimate_flops(
    config: MDFConfig,
    *,
    image_height: int = 512,
    image_width: int = 512,
    prompt_tokens: int = 96,
    answer_tokens: int = 3,
    rows: int | None = None,
) -> FlopEstimate:
    """FLOPs of label scoring for one image: ``rows`` (default: one per label) text rows of
    ``prompt_tokens + answer_tokens`` tokens, of which ``answer_tokens`` reach lm_head."""
    rows = len(config.labels) if rows is None else rows
    tiles = config.vision_config["max_num_tiles"]
    image = _image_tokens(config, tiles)
    tokens = prompt_tokens + answer_tokens
    unet = fusion = 0.0
    if not config.baseline:
        unet, channels = _unet(config)
        fusion = _fusion(config, channels, rows, tokens)
    return FlopEstimate(
        tiles_used=_tiles_used(config, image_height, image_width),
        tiles_computed=tiles,
        rows=rows,
        row_tokens=tokens,
        vision_tower=float(_vision_tower(config, tiles)),
        projector=float(2 * image * config.vision_config["vision_output_dim"] * config.hidden_size),
        text=float(_text(config, rows, tokens, answer_tokens, image)),
        unet=unet,
        fusion=float(fusion),
    )
