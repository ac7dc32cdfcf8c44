"""Why an incoming file or image is refused: the exception, its stable codes, the size rule.

Shared by the raster and DICOM probes; `mdf.imaging.files` documents the whole policy.
"""

from __future__ import annotations

__all__ = ["REJECTION_CODES", "Rejection", "check_size"]

REJECTION_CODES = frozenset(
    {
        "empty_file",
        "not_an_image",
        "unsupported_format",
        "truncated",
        "no_pixel_data",
        "unsupported_modality",
        "unsupported_sop_class",
        "grayscale",
        "unsupported_transfer_syntax",
        "too_large",
        "too_small",
        "decode_error",
    }
)


class Rejection(Exception):
    """A file or frame that cannot be used; `reason` is a short sentence stored in the database.

    `code` is one of `REJECTION_CODES`, stable for machines and statistics. The arguments
    are kept in `args`, so the exception pickles (Celery sends it between processes).
    """

    def __init__(self, code: str, reason: str) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}; valid: {sorted(REJECTION_CODES)}")
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def check_size(width: int, height: int, max_pixels: int, min_side: int) -> None:
    """Reject an image above `max_pixels` (decompression bomb) or with a side below `min_side`."""
    if width * height > max_pixels:
        raise Rejection(
            "too_large",
            f"{width}x{height} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard)",
        )
    if min(width, height) < min_side:
        raise Rejection(
            "too_small", f"{width}x{height} pixels: a side is shorter than {min_side} pixels"
        )
