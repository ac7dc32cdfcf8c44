"""The source instances a result answers: read from the registered files, checked unchanged.

A result object copies its patient and study modules from the instances it answers, and
references them by UID: so the file read must be the one that was classified. Each file
is read once and its SHA-256 compared with what intake registered; the header alone is
parsed (the objects need no pixels).
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = ["SourceUnreadable", "read_source"]


class SourceUnreadable(Exception):
    """The registered file is gone, changed or no longer DICOM; the message holds no path."""


def read_source(path: Path, sha256: str) -> Dataset:
    """The header of the registered file at ``path``, if it still hashes to ``sha256``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SourceUnreadable(f"source file unreadable: {error.strerror}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SourceUnreadable("source file changed since it was registered")
    try:
        return dcmread(BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, ValueError) as error:
        raise SourceUnreadable(
            f"source file is not readable DICOM: {type(error).__name__}"
        ) from None
