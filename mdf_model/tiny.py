"""The tiny preset, built offline: a random Mllama at toy width with its own tokenizer.

`build_tiny_base` writes an ordinary Hugging Face model directory (config, safetensors,
tokenizer, processor), and `build_tiny_checkpoint` turns it into an MDF checkpoint through
`MDFModel.from_base`, the same from-local-directory path the real Llama 3.2 11B Vision weights
take. Random Mllama weights start with closed cross-attention gates (tanh(0) = 0: the text would
ignore the image) and closed tile-embedding gates (the vision tower would not know where a tile
lies on the canvas); the tiny base opens them, as pretraining would have, so that different
images give different outputs, gradients reach the vision tower and tile positions count.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor
from transformers.models.mllama.modeling_mllama import MllamaCrossAttentionDecoderLayer

from mdf_model.configuration import MDFConfig
from mdf_model.modeling import MDFModel
from mdf_model.presets import TINY_VOCAB_SIZE
from mdf_model.pretrained import seeded
from mdf_model.tokenizer import IMAGE_TOKEN, build_tiny_tokenizer

__all__ = ["build_offline_processor", "build_tiny_base", "build_tiny_checkpoint"]

TINY_GATE = 1.0


def build_offline_processor(config: MDFConfig, extra_text: Sequence[str] = ()) -> MllamaProcessor:
    """MllamaProcessor with the tiny tokenizer and an image processor for ``config``'s tiles.

    It is the tiny preset's processor; with another preset it gives a processor that runs
    without the real tokenizer (random-weight benchmarks), with different token counts.
    """
    tokenizer = build_tiny_tokenizer(extra_text, vocab_size=TINY_VOCAB_SIZE)
    side = config.vision_config["image_size"]
    return MllamaProcessor(
        image_processor=MllamaImageProcessor(
            size={"height": side, "width": side},
            max_image_tiles=config.vision_tiles,
        ),
        tokenizer=tokenizer,
    )


def build_tiny_base(
    directory: str | Path, *, seed: int = 0, extra_text: Sequence[str] = ()
) -> Path:
    """Write a random tiny Mllama with tokenizer and processor as a Hugging Face directory."""
    directory = Path(directory)
    config = MDFConfig.from_preset("tiny")
    processor = build_offline_processor(config, extra_text)
    tokenizer = processor.tokenizer
    text = config.text_config
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    expected = (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"])
    if ids != expected or tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != TINY_VOCAB_SIZE:
        raise RuntimeError("the tiny tokenizer's special token ids do not match the tiny preset")
    with seeded(seed):
        base = MllamaForConditionalGeneration(config.mllama_config())
    vision = base.model.vision_model
    with torch.no_grad():
        for layer in base.model.language_model.layers:
            if isinstance(layer, MllamaCrossAttentionDecoderLayer):
                layer.cross_attn_attn_gate.fill_(TINY_GATE)
                layer.cross_attn_mlp_gate.fill_(TINY_GATE)
        for embedding in (
            vision.pre_tile_positional_embedding,
            vision.post_tile_positional_embedding,
            vision.gated_positional_embedding,
        ):
            embedding.gate.fill_(TINY_GATE)
    base.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_checkpoint(
    directory: str | Path,
    *,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    **changes: Any,
) -> Path:
    """Write a tiny MDF checkpoint to ``directory`` (new or empty). ``labels`` and any other
    MDFConfig field in ``changes`` override the tiny preset; the same seed gives the same
    checkpoint, byte for byte."""
    if labels is not None:
        changes["labels"] = tuple(labels)
    config = MDFConfig.from_preset("tiny", **changes)
    with tempfile.TemporaryDirectory(prefix="mdf-tiny-base-") as scratch:
        base_dir = build_tiny_base(scratch, seed=seed, extra_text=config.labels)
        model = MDFModel.from_base(base_dir, config, seed=seed)
        model.save_pretrained(directory, include_base=True)
    return Path(directory)
