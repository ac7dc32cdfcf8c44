"""Why an incoming file or image is refused: the exception and the size rule.

Shared by the raster and DICOM probes; `mdf.imaging.files` documents the whole policy.
Its codes are members of `db.lifecycle.ReasonCode`, which holds every code recorded.
"""

from __future__ import annotations

from db.lifecycle import ReasonCode

__all__ = ["Rejection", "check_size"]


class Rejection(Exception):
    """A file or frame that cannot be used; `reason` is a short sentence stored in the database.

    `code` is stable for machines and statistics. The arguments are kept in `args`, so the
    exception pickles (Celery sends it between processes).
    """

    def __init__(self, code: ReasonCode, reason: str) -> None:
        try:
            code = ReasonCode(code)
        except ValueError:
            raise ValueError(f"unknown rejection code {code!r}") from None
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def check_size(width: int, height: int, max_pixels: int, min_side: int) -> None:
    """Reject an image above `max_pixels` (decompression bomb) or with a side below `min_side`."""
    if width * height > max_pixels:
        raise Rejection(
            ReasonCode.TOO_LARGE,
            f"{width}x{height} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard)",
        )
    if min(width, height) < min_side:
        raise Rejection(
            ReasonCode.TOO_SMALL,
            f"{width}x{height} pixels: a side is shorter than {min_side} pixels",
        )
