"""Read a DICOM file's header cheaply, apply the intake policy to it, and decode its frames.

The header is parsed up to the Pixel Data element only. Completeness is then checked on
the raw bytes without decoding: for native transfer syntaxes the Pixel Data length must
cover Rows x Columns x Samples x Bits Allocated / 8 x Frames; for encapsulated ones the
item sequence must reach its delimiter and hold a fragment for every frame.

Decoding stays within bounds. A file holds at most `max_frames` frames (too_many_frames),
and every JPEG, JPEG-LS and JPEG 2000 frame's codestream must declare the header's size,
within `max_pixels` (codestream_mismatch), before anything is decoded: at intake for
every frame, and again in the worker for the frame it decodes, with pydicom's own frame
lookup, since the file may have changed. Native and RLE pixels are sized by the header,
which `max_pixels` bounds. So decoding one frame of a file of S bytes peaks at about
2 S + 32 max_pixels bytes above the worker's baseline: the file's bytes and pydicom's copy
of its Pixel Data, then the decoder's output and working buffers (measured at about 31
bytes a pixel for JPEG and JPEG 2000, 24 for JPEG-LS) and the 8-bit rescaling, done in
place. tests/mdf/imaging/test_decode_bounds.py holds hostile files and maximal accepted
ones under 2 S + 48 max_pixels. A deflated data set adds its inflated copy, which may
reach at most 24 max_pixels bytes (too_large): inflation.py counts it before pydicom
inflates it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from db.lifecycle import ReasonCode
from mdf.imaging.codestream import check_codestream, check_frames, extended_offsets
from mdf.imaging.inflation import INFLATION_PER_PIXEL, check_inflated_size
from mdf.imaging.rejection import Rejection, check_size

__all__ = [
    "ACCEPTED_MODALITIES",
    "ACCEPTED_SOP_CLASSES",
    "CLINICAL_TEXT_KEYWORD",
    "DicomHeader",
    "decode_dicom_frame",
    "inspect_dicom",
]

ACCEPTED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit Image
        "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit Image
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image
    }
)
# OP: ophthalmic photography; XC: external-camera (VL) photography; OT: "other", which
# secondary captures of fundus photographs usually carry.
ACCEPTED_MODALITIES = frozenset({"OP", "XC", "OT"})
COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
# PALETTE COLOR is a pseudo-colour rendering of one channel, not a colour photograph.
MONOCHROME_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"})
# Free clinical text: Additional Patient History (0010,21B0), as mdf.imaging.dicom_writer writes.
CLINICAL_TEXT_KEYWORD = "AdditionalPatientHistory"

_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"})
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD


@dataclass(frozen=True)
class DicomHeader:
    """An accepted DICOM image object: its header facts and how its pixels are stored.

    `patient_id` is the raw identifier: pseudonymise it at once and never log it.
    """

    ds: Dataset  # the data set up to, not including, its Pixel Data
    transfer_syntax: UID
    rows: int
    columns: int
    frames: int
    bits_stored: int
    sop_class_uid: str
    modality: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    patient_id: str | None
    laterality: str | None
    clinical_text: str | None


def inspect_dicom(
    data: bytes, max_pixels: int, min_side: int, max_frames: int, *, every_frame: bool = True
) -> DicomHeader:
    """Parse the header of the DICOM file `data`, apply the policy, check pixel completeness.

    With `every_frame`, every compressed frame's codestream header is checked against the
    header's size; a caller that decodes one frame checks that frame's bytes instead.
    """
    check_inflated_size(data, INFLATION_PER_PIXEL * max_pixels)
    stream = BytesIO(data)
    try:
        ds = dcmread(stream, force=True, stop_before_pixels=True)
    except (zlib.error, EOFError, struct.error) as exc:  # what pydicom meets at a cut
        raise Rejection(ReasonCode.TRUNCATED, f"DICOM header is cut short ({exc})") from exc
    except Exception as exc:  # pydicom raises many types for malformed headers.
        raise Rejection(ReasonCode.DECODE_ERROR, f"DICOM header cannot be parsed ({exc})") from exc
    # A deflated data set is inflated into a buffer of its own; offsets refer to that one.
    source = ds.buffer
    body = data if source is stream else source.getvalue()  # type: ignore[union-attr]
    offset = source.tell()  # type: ignore[union-attr]  # at the Pixel Data tag, or the end
    try:
        header = _image_header(ds, body, offset)
        check_size(header.columns, header.rows, max_pixels, min_side)
        if header.frames > max_frames:
            raise Rejection(
                ReasonCode.TOO_MANY_FRAMES,
                f"DICOM image claims {header.frames:,} frames; at most {max_frames} are read",
            )
        _check_pixel_data(header, body, offset, max_pixels, every_frame)
    except Rejection:
        raise
    except Exception as exc:  # pydicom converts values lazily: a malformed one raises here.
        raise Rejection(
            ReasonCode.DECODE_ERROR, f"DICOM header holds a malformed value ({exc})"
        ) from exc
    return header


def decode_dicom_frame(data: bytes, frame: int, max_pixels: int, max_frames: int) -> np.ndarray:
    """Decode frame `frame` of the DICOM file `data` as HxWx3 uint8 RGB.

    pydicom converts YBR_* to RGB (its `as_rgb` default; codecs that already return RGB,
    as for JPEG baseline YBR_FULL_422, are recognised). More than 8 bits stored are
    rescaled to 0..255.
    """
    header = inspect_dicom(data, max_pixels, 1, max_frames, every_frame=False)
    if not 0 <= frame < header.frames:
        raise Rejection(
            ReasonCode.DECODE_ERROR,
            f"frame {frame} requested; the file holds {header.frames} frame(s)",
        )
    try:
        ds = dcmread(BytesIO(data), force=True)
        ds.file_meta.TransferSyntaxUID = header.transfer_syntax  # absent from bare data sets
        if _has_codestreams(header):
            # The very bytes pydicom will decode: its lookup may differ from the walk at
            # intake when a hostile offset table points elsewhere.
            codestream = get_frame(
                ds.PixelData,
                frame,
                number_of_frames=header.frames,
                extended_offsets=extended_offsets(ds),
                endianness=_endian(header),
            )
            check_codestream(codestream, frame, header.columns, header.rows, max_pixels)
        pixels = pixel_array(ds, index=frame)
    except Rejection:
        raise
    except Exception as exc:  # decoder plugins raise many types for damaged data.
        raise Rejection(
            ReasonCode.DECODE_ERROR,
            f"DICOM frame {frame} ({header.transfer_syntax.name}) cannot be decoded ({exc})",
        ) from exc
    if pixels.shape != (header.rows, header.columns, 3):
        raise Rejection(ReasonCode.DECODE_ERROR, f"DICOM frame decoded to shape {pixels.shape}")
    if pixels.dtype == np.uint8 and header.bits_stored == 8:
        return pixels
    top = (1 << header.bits_stored) - 1
    scaled = np.minimum(pixels, top).astype(np.uint32)  # in place from here: memory bound
    scaled *= 255
    scaled += top // 2
    scaled //= top
    return scaled.astype(np.uint8)


def _image_header(ds: Dataset, body: bytes, offset: int) -> DicomHeader:
    """Apply the policy to the header, most telling reason first."""
    at_pixel_data = offset + 8 <= len(body)
    if not at_pixel_data and _cut_short(ds, len(body)):
        raise Rejection(ReasonCode.TRUNCATED, f"DICOM data set is cut short at byte {len(body):,}")
    _check_object(ds)
    if not at_pixel_data:
        raise Rejection(
            ReasonCode.NO_PIXEL_DATA, f"DICOM {_object_name(ds)} has no Pixel Data element"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in MONOCHROME_PHOTOMETRICS:
        raise Rejection(
            ReasonCode.GRAYSCALE,
            f"DICOM photometric interpretation {photometric} is not a colour photograph "
            "(red-free and monochrome images are not screened)",
        )
    syntax = _transfer_syntax(ds)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise Rejection(
            ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded here",
        )
    samples, allocated = ds.get("SamplesPerPixel"), ds.get("BitsAllocated")
    if photometric not in COLOUR_PHOTOMETRICS or samples != 3 or allocated not in (8, 16):
        raise Rejection(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"DICOM pixels are {photometric or 'of no photometric interpretation'}, "
            f"{samples} samples of {allocated} bits (expected RGB or YBR, 3 samples of 8 or 16)",
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise Rejection(ReasonCode.DECODE_ERROR, "DICOM image has no Rows or Columns")
    stored, frames = int(ds.get("BitsStored") or allocated), int(get_nr_frames(ds, warn=False))
    if not 1 <= stored <= allocated or frames < 1:
        raise Rejection(
            ReasonCode.DECODE_ERROR,
            f"DICOM image claims {stored} of {allocated} bits stored and {frames} frame(s)",
        )
    return DicomHeader(
        ds=ds,
        transfer_syntax=syntax,
        rows=int(rows),
        columns=int(columns),
        frames=frames,
        bits_stored=stored,
        sop_class_uid=_sop_class(ds),
        modality=_text(ds, "Modality"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        laterality=_laterality(ds),
        clinical_text=_text(ds, CLINICAL_TEXT_KEYWORD),
    )


def _check_object(ds: Dataset) -> None:
    """Accept only photographs: the Modality first, as people know it, then the SOP class."""
    modality = _text(ds, "Modality")
    expected = (
        "is not a fundus photograph (expected Ophthalmic Photography, VL Photographic or "
        "a colour Secondary Capture with modality OP, XC or OT)"
    )
    if modality is not None and modality.upper() not in ACCEPTED_MODALITIES:
        raise Rejection(ReasonCode.UNSUPPORTED_MODALITY, f"DICOM {_object_name(ds)} {expected}")
    if _sop_class(ds) not in ACCEPTED_SOP_CLASSES:
        raise Rejection(ReasonCode.UNSUPPORTED_SOP_CLASS, f"DICOM {_object_name(ds)} {expected}")


def _object_name(ds: Dataset) -> str:
    """'modality CT (CT Image Storage)': how a reason names a DICOM object."""
    sop_class = _sop_class(ds)
    sop_name = UID(sop_class).name if sop_class else "no SOP Class UID"
    return f"modality {_text(ds, 'Modality') or '(none)'} ({sop_name})"


def _cut_short(ds: Dataset, size: int) -> bool:
    """Whether the data set is empty or ends somewhere other than after its last element.

    pydicom keeps a last element whose value runs past the end, and silently drops a
    partial element header: either way the last element does not end where the data does.
    Undefined-length sequences record no end, so a data set ending in one counts as whole.
    """
    if not ds:
        return True
    last = ds.get_item(max(ds.keys()))
    return (
        isinstance(last, RawDataElement)
        and last.length != _UNDEFINED_LENGTH
        and last.value_tell + last.length != size
    )


def _transfer_syntax(ds: Dataset) -> UID:
    """The file meta's transfer syntax, or the encoding pydicom found in a bare data set."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return UID(syntax)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_pixel_data(
    header: DicomHeader, body: bytes, offset: int, max_pixels: int, every_frame: bool
) -> None:
    """Check the Pixel Data element at `offset` holds every frame the header promises, and
    with `every_frame` that each codestream states the header's size."""
    endian = _endian(header)
    if struct.unpack_from(f"{endian}HH", body, offset) != (0x7FE0, 0x0010):
        raise Rejection(ReasonCode.UNSUPPORTED_FORMAT, "DICOM holds float pixel data, not an image")
    # The VR says whether the element is explicit: some files declare an explicit transfer
    # syntax but are written implicit, which pydicom detects without recording it.
    start = offset + (12 if body[offset + 4 : offset + 6] in _LONG_LENGTH_VRS else 8)
    if start > len(body):
        raise Rejection(
            ReasonCode.TRUNCATED, "DICOM file ends inside its Pixel Data element header"
        )
    (length,) = struct.unpack_from(f"{endian}L", body, start - 4)
    encapsulated = header.transfer_syntax.is_encapsulated
    if encapsulated != (length == _UNDEFINED_LENGTH):
        raise Rejection(
            ReasonCode.DECODE_ERROR,
            f"DICOM Pixel Data length does not fit transfer syntax {header.transfer_syntax.name}",
        )
    if not encapsulated:
        expected = get_expected_length(header.ds)
        available = min(length, len(body) - start)
        if available < expected:
            raise Rejection(
                ReasonCode.TRUNCATED,
                f"DICOM Pixel Data holds {available:,} of the {expected:,} bytes "
                f"that {header.frames} frame(s) of {header.columns}x{header.rows} need",
            )
        return
    table_entries, fragments = _walk_items(body, start, endian)
    if fragments < header.frames:
        raise Rejection(
            ReasonCode.TRUNCATED,
            f"encapsulated Pixel Data holds {fragments} fragment(s) for {header.frames} frame(s)",
        )
    if table_entries and table_entries != header.frames:
        raise Rejection(
            ReasonCode.DECODE_ERROR,
            f"Basic Offset Table lists {table_entries} frame(s), "
            f"Number of Frames says {header.frames}",
        )
    if every_frame and _has_codestreams(header):
        stream = BytesIO(body)  # shares `body`'s memory until written to
        stream.seek(start)
        extended = extended_offsets(header.ds)
        check_frames(
            stream, header.frames, header.columns, header.rows, endian, extended, max_pixels
        )


def _has_codestreams(header: DicomHeader) -> bool:
    """Whether the frames are JPEG, JPEG-LS or JPEG 2000 codestreams that state a size.

    RLE segments are sized by the header; other encapsulated syntaxes are not decoded here.
    """
    return header.transfer_syntax.is_encapsulated and header.transfer_syntax != RLELossless


def _endian(header: DicomHeader) -> str:
    return "<" if header.ds.original_encoding[1] else ">"


def _walk_items(body: bytes, start: int, endian: str) -> tuple[int, int]:
    """Walk encapsulated Pixel Data items to the sequence delimiter without copying them.

    Returns the number of Basic Offset Table entries and the number of fragments.
    """
    lengths = []
    position = start
    while True:
        if position + 8 > len(body):
            raise Rejection(
                ReasonCode.TRUNCATED, "encapsulated Pixel Data ends before its sequence delimiter"
            )
        group, element, length = struct.unpack_from(f"{endian}HHL", body, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED_LENGTH:
            raise Rejection(
                ReasonCode.DECODE_ERROR,
                f"encapsulated Pixel Data is malformed at byte {position:,}",
            )
        lengths.append(length)
        position += 8 + length
    if not lengths:
        raise Rejection(
            ReasonCode.DECODE_ERROR, "encapsulated Pixel Data lacks its Basic Offset Table"
        )
    return lengths[0] // 4, len(lengths) - 1


def _sop_class(ds: Dataset) -> str:
    """SOP Class UID from the data set, else from the file meta; '' when neither has it."""
    return _text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))


def _text(ds: Dataset, keyword: str) -> str | None:
    """A header value as stripped text, None when absent or empty."""
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _laterality(ds: Dataset) -> str | None:
    """'L' or 'R' from Image Laterality, else Laterality; None for both eyes or unknown."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_text(ds, keyword) or "").upper()
        if value in ("L", "R"):
            return value
    return None
