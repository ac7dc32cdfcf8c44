"""A model's mask channel as a file: at the model's resolution, with where the photograph lies.

The model segments a letterboxed square (the photograph centred on black, resized to the
U-Net's side, ``mdf_model.inputs``); a channel holds its sigmoid probability as 0..255. A
channel's PNG (mode L) is the part of that square the photograph covers, with a margin of
the square's own pixels wide enough for bilinear resampling at the edges, and two text
chunks: the photograph's width and height (``MDF source size``, e.g. ``3504x2336``) and the
photograph's box in the PNG's pixels (``MDF source box``: left, top, right, bottom).
`read_mask` gives it back at the photograph's size, the probabilities upsampled
bilinearly: the pixels that writing at the source size gave (`to_source`), from a file of
516 x 346 pixels instead of 3504 x 2336 for a 3504x2336 photograph with a 512 px U-Net,
written in a fiftieth of the CPU time. A PNG without the chunks, written at the
photograph's size by earlier releases, is read as it is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

__all__ = ["BOX_KEY", "SIZE_KEY", "mask_file", "read_mask", "to_source"]

SIZE_KEY = "MDF source size"
BOX_KEY = "MDF source box"

Box = tuple[float, float, float, float]


def _source_box(side: int, size: tuple[int, int]) -> Box:
    """Where ``mdf_model.inputs`` pasted a (width, height) picture on the square of ``side``
    pixels, in that square's pixels."""
    width, height = size
    longest = max(width, height)
    scale = side / longest
    left, top = (longest - width) // 2 * scale, (longest - height) // 2 * scale
    return left, top, left + width * scale, top + height * scale


def _square(plane: np.ndarray) -> Image.Image:
    if plane.ndim != 2 or plane.shape[0] != plane.shape[1]:
        raise ValueError(f"a mask channel must be square (N, N), got {plane.shape}")
    return Image.fromarray(np.ascontiguousarray(plane, dtype=np.uint8))


def to_source(plane: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One channel of a letterboxed (N, N) mask at the source's ``size`` (width, height)."""
    square = _square(plane)
    box = _source_box(square.width, size)
    return square.resize(size, Image.Resampling.BILINEAR, box=box)


def mask_file(plane: np.ndarray, size: tuple[int, int]) -> tuple[Image.Image, PngInfo]:
    """What a channel's PNG holds for a letterboxed (N, N) ``plane`` of a photograph of
    ``size`` (width, height): the picture region with its margin, and the text chunks."""
    square = _square(plane)
    left, top, right, bottom = _source_box(square.width, size)
    # Pillow's bilinear filter reads a pixel on either side of a sample, more when it
    # reduces (a photograph smaller than the U-Net's side): keep those, so the edges
    # resample as they do in the square.
    margin = math.ceil(max(1.0, (right - left) / size[0], (bottom - top) / size[1])) + 1
    x0, y0 = max(math.floor(left) - margin, 0), max(math.floor(top) - margin, 0)
    x1 = min(math.ceil(right) + margin, square.width)
    y1 = min(math.ceil(bottom) + margin, square.height)
    info = PngInfo()
    info.add_text(SIZE_KEY, f"{size[0]}x{size[1]}")
    info.add_text(BOX_KEY, ",".join(map(repr, (left - x0, top - y0, right - x0, bottom - y0))))
    return square.crop((x0, y0, x1, y1)), info


def _geometry(png: Image.Image) -> tuple[tuple[int, int], Box]:
    """The photograph's size and box recorded in a mask PNG; a file without them is at the
    photograph's size."""
    text = getattr(png, "text", {})
    if SIZE_KEY not in text:
        return png.size, (0.0, 0.0, float(png.width), float(png.height))
    try:
        width, height = (int(v) for v in text[SIZE_KEY].split("x"))
        left, top, right, bottom = (float(v) for v in text[BOX_KEY].split(","))
    except (KeyError, ValueError) as error:
        raise ValueError(f"mask geometry unreadable ({error})") from None
    if not 0 < width * height <= (Image.MAX_IMAGE_PIXELS or math.inf):
        raise ValueError(f"mask geometry out of range: {width}x{height}")
    if not (width > 0 and 0 <= left < right <= png.width):
        raise ValueError(f"mask geometry out of range: {width}x{height}, box {left}..{right}")
    if not 0 <= top < bottom <= png.height:
        raise ValueError(f"mask geometry out of range: box {top}..{bottom} of {png.height} rows")
    return (width, height), (left, top, right, bottom)


def read_mask(path: Path | str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A stored channel, (height, width) uint8, at the photograph's size or at ``size``
    (width, height; a thumbnail's). OSError for a file Pillow cannot read, ValueError for
    geometry that does not fit the file."""
    with Image.open(path) as png:
        png.load()
        source, box = _geometry(png)
        plane = png.convert("L")
    target = size or source
    if target == plane.size and box == (0.0, 0.0, float(plane.width), float(plane.height)):
        return np.asarray(plane)
    return np.asarray(plane.resize(target, Image.Resampling.BILINEAR, box=box))
