"""Read a compressed frame's own dimensions from its codestream header, without decoding it.

A DICOM header and the JPEG, JPEG-LS or JPEG 2000 codestream in its Pixel Data each state
the image size, and the decoders allocate from the codestream: a 60 KB file whose header
says 256x256 can hold a codestream that says 60000x60000 and costs a worker 10 GB. So every
compressed frame's codestream must state what the header states before it is decoded.

The fields are read by hand from the first marker segments: JPEG SOFn (ITU T.81 B.2.2),
JPEG-LS SOF55 (ITU T.87, same layout) and JPEG 2000 / HTJ2K SIZ (ITU T.800 A.5.1). The
installed libraries do not fit: `libjpeg.get_parameters` decodes the whole codestream (a
minute and gigabytes for the file above), and `openjpeg.get_parameters` builds its tile
structures from the very SIZ values still to be checked.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames

from db.lifecycle import ReasonCode
from mdf.imaging.rejection import Rejection

__all__ = ["check_codestream", "check_frames", "codestream_size", "extended_offsets"]

# The policy admits colour images only: three samples per pixel.
_SAMPLES = 3

_SOI, _SOC_SIZ = b"\xff\xd8", b"\xff\x4f\xff\x51"
# Start-of-frame markers: SOF0-SOF15 less DHT (C4), JPG (C8) and DAC (CC); SOF55 is JPEG-LS.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
_JP2_SIGNATURE, _JP2_CODESTREAM_BOX = b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"jp2c"


def codestream_size(codestream: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) a JPEG, JPEG-LS or JPEG 2000 codestream declares.

    None when the bytes do not start with such a codestream or its header is cut short.
    """
    if codestream.startswith(_JP2_SIGNATURE):
        box = codestream.find(_JP2_CODESTREAM_BOX)
        codestream = codestream[box + 4 :] if box != -1 else b""
    try:
        if codestream.startswith(_SOC_SIZ):
            # Lsiz, Rsiz, then the reference grid size and the image offset on it.
            xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">4L", codestream, 8)
            (components,) = struct.unpack_from(">H", codestream, 40)
            return xsiz - xosiz, ysiz - yosiz, components
        if codestream.startswith(_SOI):
            return _jpeg_frame_size(codestream)
    except struct.error:  # the header ends early
        return None
    return None


def _jpeg_frame_size(codestream: bytes) -> tuple[int, int, int] | None:
    """Walk the marker segments after SOI to the first start-of-frame and read its size."""
    position = 2
    while True:
        while codestream[position : position + 2] == b"\xff\xff":  # fill bytes
            position += 1
        prefix, marker = struct.unpack_from(">BB", codestream, position)
        if prefix != 0xFF or marker == 0xDA:  # not a marker, or a scan before any frame
            return None
        if marker in _STANDALONE:
            position += 2
            continue
        if marker in _SOF:
            # Lf, sample precision, Y (lines), X (samples per line), Nf (components).
            rows, columns, components = struct.unpack_from(">HHB", codestream, position + 5)
            return columns, rows, components
        (length,) = struct.unpack_from(">H", codestream, position + 2)
        if length < 2:
            return None
        position += 2 + length


def check_codestream(
    codestream: bytes, frame: int, columns: int, rows: int, max_pixels: int
) -> None:
    """Refuse frame `frame` unless its codestream states the header's size, within the cap."""
    size = codestream_size(codestream)
    if size is None:
        raise Rejection(
            ReasonCode.CODESTREAM_MISMATCH,
            f"frame {frame} holds no readable JPEG, JPEG-LS or JPEG 2000 codestream header",
        )
    width, height, components = size
    if width * height > max_pixels or (width, height, components) != (columns, rows, _SAMPLES):
        raise Rejection(
            ReasonCode.CODESTREAM_MISMATCH,
            f"frame {frame} codestream declares {width}x{height} pixels of {components} "
            f"component(s); the header says {columns}x{rows} of {_SAMPLES} "
            f"(limit {max_pixels:,} pixels)",
        )


def check_frames(
    pixel_data: BinaryIO,
    frames: int,
    columns: int,
    rows: int,
    endian: str,
    extended: tuple[bytes, bytes] | None,
    max_pixels: int,
) -> None:
    """Check every frame's codestream in encapsulated `pixel_data` (at its first item).

    Fragments are grouped into frames by pydicom, as its decoders will group them.
    """
    try:
        grouped = generate_fragmented_frames(
            pixel_data, number_of_frames=frames, extended_offsets=extended, endianness=endian
        )
        for frame, fragments in zip(range(frames), grouped, strict=False):
            check_codestream(b"".join(fragments), frame, columns, rows, max_pixels)
    except (ValueError, struct.error) as exc:  # pydicom cannot tell the frames apart
        raise Rejection(
            ReasonCode.DECODE_ERROR, f"encapsulated Pixel Data frames cannot be located ({exc})"
        ) from exc


def extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    """The Extended Offset Table pydicom would use to find frames, None when it would not."""
    offsets, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    if offsets is None or lengths is None or len(offsets) != len(lengths):
        return None
    return offsets, lengths
