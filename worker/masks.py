"""Segmentation masks a grader can lay over the photograph: one PNG per channel, at the
model's resolution, with the photograph's size and place in it (``mdf.imaging.masks``).

The model segments a letterboxed square (the picture centred on black, resized to the
U-Net's side, ``mdf_model.inputs``); its mask holds each channel's sigmoid probability as
0..255. A channel's file is the square's picture region, not the photograph's own size:
the upsampled map held no more than the model's pixels, and writing it was half of what a
worker spent on a photograph outside the model (about 150 ms of CPU per 3504x2336
photograph, two channels, against 5 now; ``bench/masks.py``). ``read_mask`` upsamples it
bilinearly as probabilities, not as a thresholded mask, to the source's pixels (what
delivery's SEG and the analysts' overlays use), within one level of 255 of what writing at
the source size gave. A chunk's channels are written by a pool of threads.

Files are ``<image id>.<channel>.png`` in one folder per model version, each written
through a temporary file and a rename, so a reader never sees half a PNG and a re-delivered
chunk replaces a file with the same. ``predictions.mask_path`` lists them in channel order,
separated by ";", as ``images.mask_path`` lists reference masks.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mdf.imaging.masks import mask_file

__all__ = ["ImageMask", "mask_directory", "save_masks"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def mask_directory(masks_dir: Path, version_name: str) -> Path:
    """One folder per model version: a version name never escapes the masks folder."""
    return masks_dir.resolve() / _UNSAFE.sub("_", version_name)


class ImageMask(NamedTuple):
    image_id: int
    mask: np.ndarray  # (C, N, N) uint8 in the letterboxed frame; empty without a U-Net
    size: tuple[int, int]  # the source image's (width, height)


def save_masks(
    masks: Sequence[ImageMask], channels: Sequence[str], directory: Path
) -> dict[int, str]:
    """Write every channel of every image's mask, in parallel threads; per image id, its
    files' paths joined by ";" (none for an empty mask)."""
    kept = [item for item in masks if item.mask.size]
    for item in kept:
        if item.mask.ndim != 3 or item.mask.shape[0] != len(channels):
            raise ValueError(
                f"a mask of channels {list(channels)} must be (C, N, N), got {item.mask.shape}"
            )
    if not kept:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    names = [_UNSAFE.sub("_", name) for name in channels]
    paths = {
        item.image_id: [directory / f"{item.image_id}.{n}.png" for n in names] for item in kept
    }
    planes, sizes, targets = zip(
        *(
            (plane, item.size, target)
            for item in kept
            for plane, target in zip(item.mask, paths[item.image_id], strict=True)
        ),
        strict=True,
    )
    with ThreadPoolExecutor() as pool:
        list(pool.map(_write, planes, sizes, targets))  # list(): raise what a thread raised
    return {image_id: ";".join(map(str, targets)) for image_id, targets in paths.items()}


def _write(plane: np.ndarray, size: tuple[int, int], target: Path) -> None:
    picture, info = mask_file(plane, size)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            picture.save(stream, "PNG", pnginfo=info)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
