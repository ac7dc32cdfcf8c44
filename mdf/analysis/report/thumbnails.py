"""Small inline pictures of source images, with the model's masks tinted over them, as
``data:`` URIs.

Sources are decoded by ``mdf.imaging.files.load_frame``, like the workers do, so DICOM and
raster files look the same. A mask is one PNG per channel, its grey level the model's
probability, read at the overlay's size (``mdf.imaging.masks``); each channel is laid over the
photograph in its own colour, as opaque as the model is sure, so a grader sees the
photograph through where the model saw nothing. A file that has moved or no longer
decodes gives None and the page shows a placeholder instead: a report never fails for
one picture.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from mdf.imaging import Rejection, load_frame
from mdf.imaging.masks import read_mask

SIZE = 160  # a thumbnail's longer side
OVERLAY_SIZE = 320  # an overlay's: large enough to follow a vessel
#: Each channel's colour, in channel order: cyan, yellow, magenta (none is a fundus colour).
TINTS = ((0, 255, 255), (255, 230, 0), (255, 0, 255))
OPACITY = 0.8  # of a channel where its probability is 1


class Tint(NamedTuple):
    channel: str  # the mask file's channel name (``<image id>.<channel>.png``)
    colour: str  # CSS


class Pictures(NamedTuple):
    source: str | None  # the photograph
    overlay: str | None  # the photograph with its mask tinted over it; None without a mask


def tints(mask_paths: Sequence[str]) -> list[Tint]:
    """What colour each channel of a mask is drawn in, for the caption."""
    return [
        Tint(_channel(path, index), "#{:02x}{:02x}{:02x}".format(*TINTS[index % len(TINTS)]))
        for index, path in enumerate(mask_paths)
    ]


def pictures(path: Path, frame: int, mask_paths: Sequence[str]) -> Pictures:
    """The photograph's thumbnail and, given mask files, the overlay."""
    try:
        photograph = Image.fromarray(load_frame(path, frame))
    except (OSError, Rejection):
        return Pictures(None, None)
    overlay = _overlay(photograph, mask_paths) if mask_paths else None
    return Pictures(_data_uri(photograph, SIZE), overlay)


def _overlay(photograph: Image.Image, mask_paths: Sequence[str]) -> str | None:
    picture = photograph.copy()
    picture.thumbnail((OVERLAY_SIZE, OVERLAY_SIZE))
    blended = np.asarray(picture, dtype=np.float32)
    for index, mask_path in enumerate(mask_paths):
        try:
            plane = read_mask(mask_path, size=picture.size)
        except (OSError, ValueError):  # missing, not an image Pillow can read, or not a mask
            return None
        alpha = np.asarray(plane, dtype=np.float32)[..., None] / 255 * OPACITY
        tint = np.array(TINTS[index % len(TINTS)], dtype=np.float32)
        blended = blended * (1 - alpha) + tint * alpha
    return _data_uri(Image.fromarray(blended.round().astype(np.uint8)), OVERLAY_SIZE)


def _channel(path: str, index: int) -> str:
    parts = Path(path).name.split(".")
    return parts[1] if len(parts) == 3 else f"channel {index + 1}"


def _data_uri(image: Image.Image, size: int) -> str:
    image = image.copy()
    image.thumbnail((size, size))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=85)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/jpeg;base64,{encoded}"
