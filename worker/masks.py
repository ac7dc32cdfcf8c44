"""Segmentation masks a grader can lay over the photograph: one PNG per channel, at the
source image's own width and height.

The model segments a letterboxed square (the picture centred on black, resized to the
U-Net's side, ``mdf_model.inputs``); its mask holds each channel's sigmoid probability as
0..255. Only the square's picture region is kept, and it is upsampled bilinearly as
probabilities, not as a thresholded mask, so a grader sees how sure the model was at every
source pixel. Pillow resamples that sub-pixel region in one call (``resize(box=...)``),
and PNG is written with zlib's run-length strategy: smooth probability maps come out about
an eighth larger than with zlib's defaults, for half the CPU time
(``bench/masks.py`` prints both, per 3504x2336 photograph). A chunk's channels are
written by a pool of threads, since Pillow resizes and encodes without holding the GIL.
What is left is PNG's own cost: per 3504x2336 channel about 16 ms of CPU to resize and 78
to encode, of which 46 remain without any compression (``compress_level=0``, 8 MB files):
Pillow's choice of a filter for every row, which no save option skips.

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
from PIL import Image as PILImage

__all__ = ["ImageMask", "mask_directory", "save_masks", "to_source"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_Z_RLE = 3  # zlib's run-length strategy (Pillow's ``compress_type``)


def mask_directory(masks_dir: Path, version_name: str) -> Path:
    """One folder per model version: a version name never escapes the masks folder."""
    return masks_dir.resolve() / _UNSAFE.sub("_", version_name)


def to_source(plane: np.ndarray, size: tuple[int, int]) -> PILImage.Image:
    """One channel of a letterboxed (N, N) mask, as the source's ``size`` (width, height)."""
    if plane.ndim != 2 or plane.shape[0] != plane.shape[1]:
        raise ValueError(f"a mask channel must be square (N, N), got {plane.shape}")
    width, height = size
    side = max(width, height)
    scale = plane.shape[0] / side
    # where mdf_model.inputs pasted the picture on the square, in mask pixels
    left, top = (side - width) // 2 * scale, (side - height) // 2 * scale
    box = (left, top, left + width * scale, top + height * scale)
    square = PILImage.fromarray(np.ascontiguousarray(plane, dtype=np.uint8))
    return square.resize((width, height), PILImage.Resampling.BILINEAR, box=box)


class ImageMask(NamedTuple):
    image_id: int
    mask: np.ndarray  # (C, N, N) uint8 in the letterboxed frame; empty without a U-Net
    size: tuple[int, int]  # the source image's (width, height)


def save_masks(
    masks: Sequence[ImageMask], channels: Sequence[str], directory: Path
) -> dict[int, str]:
    """Write every channel of every image's mask at its source size, in parallel threads;
    per image id, its files' paths joined by ";" (none for an empty mask)."""
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
    picture = to_source(plane, size)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            picture.save(stream, "PNG", compress_level=1, compress_type=_Z_RLE)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
