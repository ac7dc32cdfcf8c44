"""Compute per image, from the configuration alone (no weights, no memory).

Counts the multiply-accumulates of matrix products and convolutions as 2 FLOPs each, as
`torch.utils.flop_counter` does (norms, activations and softmax are left out); the test suite
checks the formulas against that counter on the tiny model. The transformer parts follow the
Mllama code and the packed scoring layout (mdf_model.inputs): the vision tower computes
``vision_tiles`` tile slots, used or not, its sequence padded to a multiple of 8 per tile; one text
row per image holds the prompt and every label's answer, attention runs over the whole row (the
mask hides, it does not skip), the image keys and values of each cross-attention layer are
computed once per row, and lm_head runs once per predicted answer token. The U-Net is counted by
running it on the meta device under the flop counter.

`floor_flops` is what label scoring cannot do without: the vision tower on the tiles the
photograph uses, the prompt once, each label's answer tokens, the U-Net encoder once (to its
deepest skip level) and the fusion; no mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.mllama.image_processing_mllama import get_optimal_tiled_canvas

from mdf_model.configuration import MDFConfig
from mdf_model.unet import FundusUNet

__all__ = ["FlopEstimate", "estimate_flops", "floor_flops"]


@dataclass(frozen=True)
class FlopEstimate:
    """FLOPs of one image's label scoring: one packed text row of ``row_tokens`` tokens."""

    tiles_used: int
    tiles_computed: int
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
        height, width, config.vision_tiles, vision["image_size"]
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


def _text(config: MDFConfig, tokens: int, predicted: int, image: int) -> float:
    """One row of ``tokens`` tokens over ``image`` image tokens; ``predicted`` reach lm_head."""
    t = config.text_config
    hidden, inter = t["hidden_size"], t["intermediate_size"]
    kv_width = t["num_key_value_heads"] * hidden // t["num_attention_heads"]
    mlp = 2 * 3 * hidden * inter * tokens
    cross = len(t["cross_attention_layers"])
    self_layers = t["num_hidden_layers"] - cross
    self_attention = 2 * tokens * (2 * hidden**2 + 2 * hidden * kv_width) + 4 * tokens**2 * hidden
    cross_attention = (
        2 * tokens * 2 * hidden**2  # q, o
        + 2 * image * 2 * hidden * kv_width  # k, v of the image tokens, once per row
        + 4 * tokens * image * hidden
    )
    lm_head = 2 * predicted * hidden * t["vocab_size"]
    return self_layers * (self_attention + mlp) + cross * (cross_attention + mlp) + lm_head


def _fusion(config: MDFConfig, channels: list[int], tokens: int, segment: bool) -> float:
    t = config.text_config
    hidden = t["hidden_size"]
    kv_width = t["num_key_value_heads"] * hidden // t["num_attention_heads"]
    per_level = config.patch_grid**2
    unet_tokens = per_level * len(channels)
    projection = sum(2 * per_level * c * config.patch_pool**2 * hidden for c in channels)
    per_layer = (
        2 * unet_tokens * 2 * hidden * kv_width  # k, v once per image
        + 2 * tokens * 2 * hidden**2  # q, o
        + 4 * tokens * unet_tokens * hidden
    )
    film = sum(2 * hidden * 2 * c for c in channels) if segment else 0
    return projection + len(config.fusion_layers) * per_layer + film


def _unet(config: MDFConfig, segment: bool) -> tuple[float, list[int]]:
    """The encoder (to the deepest skip level without ``segment``) and, with it, the decoder."""
    with torch.device("meta"):
        unet = FundusUNet(
            classes=len(config.seg_classes),
            decoder_channels=config.unet_decoder_channels,
            skip_levels=config.skip_levels,
            encoder=config.unet_encoder,
        )
        pixels = torch.empty(1, 3, config.unet_input_size, config.unet_input_size)
    with FlopCounterMode(display=False) as counter:
        features = unet.encode(pixels, for_decoder=segment)
        if segment:
            unet.decode(features, unet.skips(features))
    return float(counter.get_total_flops()), unet.skip_channels


def _estimate(
    config: MDFConfig,
    tiles: int,
    *,
    image_height: int,
    image_width: int,
    prompt_tokens: int,
    answer_tokens: int | Sequence[int],
    segment: bool,
) -> FlopEstimate:
    answers = (
        [answer_tokens] * len(config.labels)
        if isinstance(answer_tokens, int)
        else list(answer_tokens)
    )
    if len(answers) != len(config.labels) or min(answers) < 1:
        raise ValueError(f"answer_tokens: one positive length per label, got {answers}")
    tokens = prompt_tokens + sum(answers)
    # The last prompt token predicts every answer's first token, each answer token the next.
    predicted = 1 + sum(length - 1 for length in answers)
    image = _image_tokens(config, tiles)
    unet = fusion = 0.0
    if not config.baseline:
        unet, channels = _unet(config, segment)
        fusion = _fusion(config, channels, tokens, segment)
    return FlopEstimate(
        tiles_used=_tiles_used(config, image_height, image_width),
        tiles_computed=tiles,
        row_tokens=tokens,
        vision_tower=float(_vision_tower(config, tiles)),
        projector=float(2 * image * config.vision_config["vision_output_dim"] * config.hidden_size),
        text=float(_text(config, tokens, predicted, image)),
        unet=unet,
        fusion=float(fusion),
    )


def estimate_flops(
    config: MDFConfig,
    *,
    image_height: int = 512,
    image_width: int = 512,
    prompt_tokens: int = 96,
    answer_tokens: int | Sequence[int] = 3,
    segment: bool = True,
) -> FlopEstimate:
    """FLOPs of label scoring for one photograph as the model computes it: ``prompt_tokens``
    then each label's answer (``answer_tokens``: one length for all, or one per label) in one
    row; with ``segment``, FiLM and the whole U-Net for the mask."""
    return _estimate(
        config,
        config.vision_tiles,
        image_height=image_height,
        image_width=image_width,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        segment=segment,
    )


def floor_flops(
    config: MDFConfig,
    *,
    image_height: int = 512,
    image_width: int = 512,
    prompt_tokens: int = 96,
    answer_tokens: int | Sequence[int] = 3,
) -> FlopEstimate:
    """The floor of label scoring for one photograph (see the module docstring)."""
    return _estimate(
        config,
        _tiles_used(config, image_height, image_width),
        image_height=image_height,
        image_width=image_width,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        segment=False,
    )
