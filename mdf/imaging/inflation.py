"""Refuse a deflated DICOM data set that would inflate past a bound, before pydicom
inflates it.

Deflated Explicit VR Little Endian compresses the whole data set after the file meta
group, and pydicom inflates it in one call: zeros deflate about 1000:1, so a file within
any sane size cap can inflate to hundreds of gigabytes. The inflated size is counted here
in 1 MiB steps and discarded, so the check costs a megabyte of memory whatever the file.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from db.lifecycle import ReasonCode
from mdf.imaging.rejection import Rejection

__all__ = ["INFLATION_PER_PIXEL", "check_inflated_size"]

#: Bytes a deflated data set may inflate to, per pixel of ``max_pixels``: room for a
#: frame of 16-bit RGB at the pixel cap four times over, and its header.
INFLATION_PER_PIXEL = 24
_STEP = 1 << 20


def check_inflated_size(data: bytes, limit: int) -> None:
    """Raise ``too_large`` when ``data`` is a deflated DICOM inflating past ``limit`` bytes.

    Anything else passes: a file that is not deflated, or whose meta group or deflate
    stream is malformed, is left to pydicom, which refuses it with its own reason.
    """
    stream = BytesIO(data)
    try:
        read_preamble(stream, force=True)
        meta = _read_file_meta_info(stream)  # pydicom's own meta reader; no public one reads bytes
        # Elements convert when first read: a malformed one (an unknown VR) raises here.
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # pydicom raises many types for a malformed meta group
        return
    if not deflated:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = data[stream.tell() :], 0
    try:
        while pending and inflated <= limit:
            inflated += len(inflater.decompress(pending, _STEP))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return
    if inflated > limit:
        raise Rejection(
            ReasonCode.TOO_LARGE,
            f"the deflated data set inflates past {limit:,} bytes (decompression bomb)",
        )
