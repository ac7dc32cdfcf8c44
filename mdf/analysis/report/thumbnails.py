"""Small inline pictures of source images and their masks, as ``data:`` URIs.

Sources are decoded by ``mdf.imaging.files.load_frame``, like the workers do, so DICOM and
raster files look the same. A file that has moved or no longer decodes gives None and
the page shows a placeholder instead: a report never fails for one picture.
"""

from __future__ import annotations

import base64
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageOps

from mdf.imaging import Rejection, load_frame

SIZE = 160


def source_thumbnail(path: Path, frame: int) -> str | None:
    try:
        pixels = load_frame(path, frame)
    except (OSError, Rejection):
        return None
    return _data_uri(Image.fromarray(pixels), "JPEG")


def mask_thumbnail(path: Path) -> str | None:
    """The mask stretched to full contrast: its classes are small integers, nearly black."""
    try:
        with Image.open(path) as mask:
            return _data_uri(ImageOps.autocontrast(mask.convert("L")), "PNG")
    except OSError:  # missing, or not an image Pillow can read
        return None


def _data_uri(image: Image.Image, kind: str) -> str:
    image.thumbnail((SIZE, SIZE))
    buffer = BytesIO()
    image.save(buffer, kind, quality=85) if kind == "JPEG" else image.save(buffer, kind)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{kind.lower()};base64,{encoded}"
