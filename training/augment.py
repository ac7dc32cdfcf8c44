"""Random flips of the training images in the joint loop, when the configuration asks.

A fundus sign means the same mirrored left to right (the other eye's anatomy) or top to
bottom, so a fine-tune that learns its few photographs rather than the disease (training
answer loss far below the validation one) can be given each image flipped at random, both
ways independently, at every step. It is off by default: on the CPU's short runs of the tiny
preset it slowed learning and did not raise held-out accuracy (the README has the figures).

The flips act on the prepared tensors, not on the photograph, so an epoch costs no new decode
or resize: the U-Net input and its reference mask are flipped whole, and the vision tower's
tiles are put back together into the processor's canvas (tiles in row-major order over the
canvas's rows and columns, as Mllama's processor splits it), flipped and split again. The
canvas's padding moves with the flip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers.models.mllama.image_processing_mllama import get_all_supported_aspect_ratios

from mdf_model import PreparedInput
from training.config import Augmentation

__all__ = ["flipped", "randomly_flipped"]


def _flip_canvas(
    pixel_values: torch.Tensor, aspect_ratio_id: int, dims: tuple[int, ...]
) -> torch.Tensor:
    """(1, slots, C, h, w) tiles of one image -> the same with their canvas flipped on
    ``dims`` (-1 left-right, -2 top-bottom); the unused slots stay as they are."""
    slots = pixel_values.shape[1]
    rows, cols = get_all_supported_aspect_ratios(slots)[aspect_ratio_id - 1]
    used = rows * cols
    _, _, channels, height, width = pixel_values.shape
    canvas = (
        pixel_values[0, :used]
        .view(rows, cols, channels, height, width)
        .permute(2, 0, 3, 1, 4)
        .reshape(channels, rows * height, cols * width)
        .flip(dims)
    )
    tiles = (
        canvas.view(channels, rows, height, cols, width)
        .permute(1, 3, 0, 2, 4)
        .reshape(used, channels, height, width)
    )
    out = pixel_values.clone()
    out[0, :used] = tiles
    return out


def flipped(item: PreparedInput, *, horizontal: bool, vertical: bool) -> PreparedInput:
    """``item`` with its photograph mirrored left to right and/or top to bottom."""
    dims = tuple(dim for dim, flip in ((-1, horizontal), (-2, vertical)) if flip)
    if not dims:
        return item
    return dataclasses.replace(
        item,
        pixel_values=_flip_canvas(item.pixel_values, int(item.aspect_ratio_ids[0]), dims),
        unet_pixels=None if item.unet_pixels is None else item.unet_pixels.flip(dims),
        seg_target=None if item.seg_target is None else item.seg_target.flip(dims),
    )


def randomly_flipped(
    inputs: Sequence[PreparedInput],
    batch: np.ndarray,
    taken: np.ndarray,
    rng: np.random.Generator,
    augmentation: Augmentation,
) -> Mapping[int, PreparedInput]:
    """The examples ``taken`` (a rank's share of the global ``batch``; all of it in one
    process), each flipped as ``augmentation`` allows with probability 1/2 per direction.
    The draws are made for the whole batch from the loop's generator, so every rank of a
    sharded run draws alike and flips only its own images; with both flips off nothing is
    drawn."""
    if not (augmentation.horizontal_flip or augmentation.vertical_flip):
        return {int(index): inputs[index] for index in taken}
    draws = dict(zip(batch.tolist(), rng.random((len(batch), 2)) < 0.5, strict=True))
    return {
        index: flipped(
            inputs[index],
            horizontal=augmentation.horizontal_flip and bool(draws[index][0]),
            vertical=augmentation.vertical_flip and bool(draws[index][1]),
        )
        for index in taken.tolist()
    }
