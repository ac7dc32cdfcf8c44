"""Decide whether an incoming file holds usable colour fundus photographs, and decode them.

`probe` runs on every file of a night at intake, so it reads the file once, hashes those
bytes and parses only headers: DICOM up to the Pixel Data element, raster files as far as
Pillow needs for size and mode. It never decodes pixels; truncation is found by cheap
structural checks instead (the Pixel Data length a DICOM header implies, a complete
encapsulated item sequence, a JPEG end-of-image marker after the last scan, a PNG IEND
chunk, TIFF strips inside the file). `load_frame` decodes one image for the workers.
`decode_reduced` decodes a JPEG at a fraction of its size (libjpeg's DCT scaling: 1/2, 1/4
or 1/8, several times faster than a full decode) when a consumer needs fewer pixels than it
holds, and says the image's own size, which results such as masks are laid out on.

The file type is decided by content, never by extension: DICOM (with or without the
128-byte preamble), JPEG, PNG or TIFF. Anything else is rejected.

Policy (each rejection carries a stable `code` and a specific human-readable `reason`):

- DICOM objects must be Ophthalmic Photography 8 or 16 bit, VL Photographic, Secondary
  Capture or Multi-frame True Color Secondary Capture (`ACCEPTED_SOP_CLASSES`), and their
  Modality, when present, must be OP, XC or OT (`ACCEPTED_MODALITIES`). A foreign
  modality (CT, MR, US, SR, RTSTRUCT, ...) is `unsupported_modality`; any other SOP class
  is `unsupported_sop_class`. Both reasons name the modality and the SOP class.
- Colour only. MONOCHROME1/2 DICOM, PALETTE COLOR DICOM (a pseudo-colour rendering of
  one channel) and grayscale rasters are `grayscale`: the classifier was trained on
  colour fundus photographs, and a red-free or monochrome image would be read as if it
  were colour and misclassified without any warning.
- 16-bit colour (Ophthalmic Photography 16 bit) is accepted; `load_frame` rescales it to
  8 bits from Bits Stored (0 .. 2**BitsStored - 1 maps onto 0 .. 255).
- DICOM transfer syntaxes: uncompressed (implicit/explicit little endian, explicit big
  endian), deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and HTJ2K
  are accepted when an installed pydicom plugin decodes them; otherwise
  `unsupported_transfer_syntax` names the syntax.
- Size: more than `max_pixels` pixels in one image is `too_large` (a decompression bomb
  guard, also applied to Pillow); a side shorter than `min_side` is `too_small`.
- Decoding stays within bounds (`mdf.imaging.dicom` states the memory bound): a DICOM
  file with more than `max_frames` frames is `too_many_frames`; a compressed frame whose
  JPEG, JPEG-LS or JPEG 2000 codestream declares another size than the header, or more
  than `max_pixels`, is `codestream_mismatch`. Pillow decodes the size it reports from
  the raster header, which the size check bounds before any pixel is decoded.
- `empty_file`, `not_an_image` (text, PDF, unknown bytes), `unsupported_format` (another
  image format, or a colour encoding that cannot become RGB), `truncated`,
  `no_pixel_data` (a DICOM image object without Pixel Data) and `decode_error` (a
  malformed header, or pixels that fail to decode) complete the codes.

`load_frame` returns HxWx3 uint8 RGB: YBR DICOM is converted to RGB by pydicom, JPEG and
TIFF are turned upright by their EXIF orientation, RGBA/CMYK/palette become RGB.
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from db.lifecycle import ReasonCode
from mdf.imaging.dicom import decode_dicom_frame, inspect_dicom
from mdf.imaging.rejection import Rejection, check_size

__all__ = [
    "DecodedFrame",
    "ProbedFile",
    "ProbedImage",
    "decode_frame",
    "decode_reduced",
    "load_frame",
    "probe",
]

# Pillow modes that are colour and convert to RGB, and those that hold one channel.
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "P", "PA"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})

_RASTER_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_OTHER_IMAGE_MAGIC = (
    (b"GIF8", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 file"),
)
# First tag of a DICOM data set written without preamble: group 0002 or 0008, either
# byte order.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_EXIF_ORIENTATION = 0x0112
# Bytes per value of the TIFF field types wider than one byte (TIFF 6.0 section 2).
_TIFF_TYPE_SIZES = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


@dataclass(frozen=True)
class ProbedImage:
    """One usable image: a single-frame file, or one frame of a multi-frame DICOM."""

    frame: int
    width: int
    height: int


@dataclass(frozen=True)
class ProbedFile:
    """What intake registers about one accepted file; DICOM facts are None for rasters.

    `patient_id` is the raw identifier: pseudonymise it at once and never log it.
    """

    kind: str
    images: list[ProbedImage]
    sop_class_uid: str | None = None
    modality: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    patient_id: str | None = None
    laterality: str | None = None
    clinical_text: str | None = None


def probe(
    path: Path,
    *,
    max_pixels: int = 50_000_000,
    min_side: int = 64,
    max_frames: int = 64,
    data: bytes | None = None,
) -> ProbedFile:
    """Return the usable images of one incoming file, or raise `Rejection` saying why not.

    `data`, when given, is the file's content already read by the caller. OSError from
    reading the file is not a property of the file and propagates.
    """
    if data is None:
        data = path.read_bytes()
    kind = _sniff(data)
    if kind != "dicom":
        width, height = _upright_size(_open_raster(data, kind, max_pixels, min_side), kind)
        return ProbedFile(kind, images=[ProbedImage(0, width, height)])
    header = inspect_dicom(data, max_pixels, min_side, max_frames)
    return ProbedFile(
        kind,
        images=[ProbedImage(i, header.columns, header.rows) for i in range(header.frames)],
        sop_class_uid=header.sop_class_uid,
        modality=header.modality,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_uid=header.sop_uid,
        patient_id=header.patient_id,
        laterality=header.laterality,
        clinical_text=header.clinical_text,
    )


def load_frame(
    path: Path, frame: int = 0, *, max_pixels: int = 50_000_000, max_frames: int = 64
) -> np.ndarray:
    """Decode one image of a file as an HxWx3 uint8 RGB array; raise `Rejection` on failure.

    OSError from reading the file propagates.
    """
    return decode_frame(path.read_bytes(), frame, max_pixels=max_pixels, max_frames=max_frames)


def decode_frame(
    data: bytes, frame: int = 0, *, max_pixels: int = 50_000_000, max_frames: int = 64
) -> np.ndarray:
    """Decode one image of a file's content as an HxWx3 uint8 RGB array, or raise `Rejection`.

    The content passes the same checks as in `probe` first (except the minimum size, which
    is intake's business), so a file replaced since intake cannot slip through. A caller
    that must know what it decoded (the worker checks the registered sha256) reads the
    bytes once and passes them here.
    """
    return _decode(data, frame, None, max_pixels, max_frames).pixels


@dataclass(frozen=True)
class DecodedFrame:
    """Pixels decoded for a purpose, and the size of the image they were decoded from."""

    pixels: np.ndarray  # HxWx3 uint8 RGB, possibly smaller than the image
    size: tuple[int, int]  # the image's own upright (width, height), as its file declares


def decode_reduced(
    data: bytes,
    frame: int = 0,
    *,
    long_side: int,
    max_pixels: int = 50_000_000,
    max_frames: int = 64,
) -> DecodedFrame:
    """Like `decode_frame`, but a JPEG at the smallest of 1/1, 1/2, 1/4 and 1/8 of its size
    that keeps at least ``long_side`` pixels on its long side (and the aspect ratio, to a
    pixel's rounding): for a consumer that resamples to that side anyway, the reduced
    decode gives nearly what a full decode and a resize would, for a fraction of the work.
    Other formats are decoded whole; PNG and TIFF cannot decode reduced, and DICOM frames
    go through pydicom's decoders, which decode whole frames and own the colour-space
    decisions of each transfer syntax. The size and pixel limits apply to the declared
    size, before anything is decoded.
    """
    if long_side < 1:
        raise ValueError(f"long_side must be positive, got {long_side}")
    return _decode(data, frame, long_side, max_pixels, max_frames)


def _decode(
    data: bytes, frame: int, long_side: int | None, max_pixels: int, max_frames: int
) -> DecodedFrame:
    kind = _sniff(data)
    if kind == "dicom":
        pixels = decode_dicom_frame(data, frame, max_pixels, max_frames)
        return DecodedFrame(pixels, (pixels.shape[1], pixels.shape[0]))
    image = _open_raster(data, kind, max_pixels, min_side=1)
    if frame != 0:
        raise Rejection(
            ReasonCode.DECODE_ERROR, f"frame {frame} requested from a single-image {kind}"
        )
    reduce = kind == "jpeg" and long_side is not None and long_side < max(image.size)
    declared = _upright_size(image, kind) if reduce else None  # before draft() resizes
    try:
        if reduce:
            # Pillow picks the largest DCT scale at which both sides still cover the request.
            ratio = long_side / max(image.size)
            image.draft(None, (math.ceil(image.width * ratio), math.ceil(image.height * ratio)))
        upright = ImageOps.exif_transpose(image) if kind != "png" else image
        pixels = np.asarray(upright.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for damaged image data.
        raise Rejection(
            ReasonCode.DECODE_ERROR, f"{kind.upper()} pixels cannot be decoded ({exc})"
        ) from exc
    return DecodedFrame(pixels, declared or (pixels.shape[1], pixels.shape[0]))


def _sniff(data: bytes) -> str:
    """Name the file type from its content, or reject it."""
    if not data:
        raise Rejection(ReasonCode.EMPTY_FILE, "the file is empty (0 bytes)")
    if data[128:132] == b"DICM" or data[:2] in _BARE_DICOM_STARTS:
        return "dicom"
    for magic, kind in _RASTER_MAGIC:
        if data.startswith(magic):
            return kind
    for magic, name in _OTHER_IMAGE_MAGIC:
        if data.startswith(magic):
            raise Rejection(
                ReasonCode.UNSUPPORTED_FORMAT,
                f"{name}; only DICOM, JPEG, PNG and TIFF files are read",
            )
    if data.startswith(b"%PDF"):
        what = "a PDF document"
    elif all(byte >= 0x20 or byte in b"\t\n\r" for byte in data[:1024]):
        what = "a text file"
    else:
        what = "unrecognised binary content"
    raise Rejection(ReasonCode.NOT_AN_IMAGE, f"{what}, not a DICOM, JPEG, PNG or TIFF image")


# --- raster files ---------------------------------------------------------------------


def _open_raster(data: bytes, kind: str, max_pixels: int, min_side: int) -> Image.Image:
    """Open a JPEG/PNG/TIFF lazily (header only) and apply the policy checks.

    Pillow's decompression-bomb limit is process-wide; every call sets it from `max_pixels`.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    name = kind.upper()
    _check_raster_complete(data, kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data), formats=[name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejection(
            ReasonCode.TOO_LARGE,
            f"{name} header claims more than {max_pixels:,} pixels (decompression bomb)",
        ) from exc
    except Exception as exc:  # Pillow raises many types for damaged headers.
        raise Rejection(ReasonCode.DECODE_ERROR, f"{name} header cannot be read ({exc})") from exc
    if kind == "tiff":
        _check_tiff_strips(image, len(data))
    if image.mode in GRAYSCALE_MODES or image.mode.startswith("I;"):
        raise Rejection(
            ReasonCode.GRAYSCALE,
            f"{name} is grayscale (mode {image.mode}); only colour photographs are screened",
        )
    if image.mode not in COLOUR_MODES:
        raise Rejection(
            ReasonCode.UNSUPPORTED_FORMAT, f"{name} colour mode {image.mode} is not read"
        )
    check_size(*image.size, max_pixels, min_side)
    return image


def _check_raster_complete(data: bytes, kind: str) -> None:
    """Reject a raster file whose end is missing, from its bytes alone."""
    if kind == "jpeg":
        # Markers cannot occur inside entropy-coded data, so a complete file has no
        # start-of-scan after its last end-of-image marker (an EXIF thumbnail's EOI comes
        # before the main scan). Searching from the end costs nothing for whole files.
        end = data.rfind(b"\xff\xd9")
        complete = end != -1 and data.find(b"\xff\xda", end) == -1
    elif kind == "png":
        complete = data.rfind(_PNG_IEND) != -1
    else:
        complete = _tiff_directory_end(data) <= len(data)
    if not complete:
        raise Rejection(
            ReasonCode.TRUNCATED, f"{kind.upper()} file ends before its image data does"
        )


def _tiff_directory_end(data: bytes) -> int:
    """Where the first TIFF image directory and the values it points to end.

    Writers that put the directory after the pixels lose it first when the file is cut.
    """
    endian = "<" if data.startswith(b"II") else ">"
    start = struct.unpack_from(f"{endian}I", data, 4)[0] if len(data) >= 8 else len(data)
    if start + 2 > len(data):
        return start + 2
    (entries,) = struct.unpack_from(f"{endian}H", data, start)
    end = start + 2 + 12 * entries + 4  # entry count, 12-byte entries, next-directory offset
    if end > len(data):
        return end
    for entry in range(start + 2, start + 2 + 12 * entries, 12):
        field_type, count, value = struct.unpack_from(f"{endian}HLL", data, entry + 2)
        size = count * _TIFF_TYPE_SIZES.get(field_type, 1)
        if size > 4:  # larger values live elsewhere in the file, at offset `value`
            end = max(end, value + size)
    return end


def _check_tiff_strips(image: Image.Image, size: int) -> None:
    """Reject a TIFF whose strips or tiles reach past the end of the file."""
    tags = image.tag_v2  # type: ignore[attr-defined]
    offsets = tags.get(273) or tags.get(324) or ()  # strip or tile offsets
    counts = tags.get(279) or tags.get(325) or ()  # strip or tile byte counts
    if any(o + c > size for o, c in zip(offsets, counts, strict=False)):
        raise Rejection(ReasonCode.TRUNCATED, "TIFF image data reaches past the end of the file")


def _upright_size(image: Image.Image, kind: str) -> tuple[int, int]:
    """Width and height as displayed: EXIF orientations 5-8 swap the sides.

    PNG is left as stored: Pillow reads a PNG's EXIF only by decoding the whole image.
    """
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if kind != "png" else 1
    except Exception as exc:  # Pillow raises many types for damaged EXIF blocks.
        raise Rejection(
            ReasonCode.DECODE_ERROR, f"{kind.upper()} EXIF data cannot be read ({exc})"
        ) from exc
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
