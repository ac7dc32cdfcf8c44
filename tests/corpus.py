"""A deterministic corpus of incoming files, good and bad, for imaging and intake tests.

`build_corpus(directory)` writes every file of `EXPECTED` and returns that mapping of file
name to expected outcome: "ok:N" for a file with N usable images, otherwise the rejection
code `mdf.imaging.files.probe` must raise. Frame k of every accepted file shows
`fundus_image(k)` upright in RGB: exactly for the files in `LOSSLESS`, within lossy
compression error for the others. Pixels, UIDs and dates are fixed, so every build writes
the same files. pytest puts tests/ on sys.path, so test modules `import corpus`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, itemize_fragment
from pydicom.uid import (
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from mdf.imaging.dicom_writer import write_dicom_op

__all__ = [
    "CLINICAL_TEXT",
    "EXPECTED",
    "HEIGHT",
    "HOSTILE",
    "LOSSLESS",
    "PATIENT_ID",
    "RED_PATCH",
    "WIDTH",
    "build_corpus",
    "expected_images",
    "fundus_image",
    "uid_for",
]

# Not square, so a decoder that swaps rows and columns is caught.
HEIGHT, WIDTH = 96, 128
# A pure red block on the 16-pixel grid, so chroma subsampling keeps it red.
RED_PATCH = (slice(16, 32), slice(16, 32))
PATIENT_ID = "CORPUS-0001"
CLINICAL_TEXT = "61-year-old man, type 2 diabetes for 12 years."
ACQUIRED = datetime(2025, 3, 14, 22, 30)

OP_16BIT = UID("1.2.840.10008.5.1.4.1.1.77.1.5.2")
OP_8BIT = UID("1.2.840.10008.5.1.4.1.1.77.1.5.1")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
RT_STRUCTURE_SET = UID("1.2.840.10008.5.1.4.1.1.481.3")
GRAYSCALE_BYTE_SC = UID("1.2.840.10008.5.1.4.1.1.7.2")


def fundus_image(k: int = 0) -> np.ndarray:
    """A smooth fundus-like RGB picture (HEIGHT x WIDTH x 3 uint8); `k` moves the optic disc.

    Dark surround, an orange-red retina, a yellowish optic disc and darker vessels, plus
    pure red, green and blue blocks near the top for colour checks.
    """
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    cy, cx = HEIGHT / 2, WIDTH / 2
    retina = ((yy - cy) / (HEIGHT * 0.48)) ** 2 + ((xx - cx) / (WIDTH * 0.42)) ** 2 <= 1
    shade = 1 - 0.4 * np.hypot(yy - cy, xx - cx) / np.hypot(cy, cx)
    image = np.zeros((HEIGHT, WIDTH, 3))
    image[retina] = np.outer(shade[retina], (200, 80, 30))
    disc_y, disc_x = cy, cx + 20 - 12 * k
    disc = np.hypot(yy - disc_y, xx - disc_x) < 11
    image[disc] = (240, 200, 110)
    vessels = retina & ~disc & (np.abs(np.sin((xx - disc_x) / 9) * 12 - (yy - disc_y)) < 1.5)
    image[vessels] = (110, 25, 15)
    image[RED_PATCH] = (255, 0, 0)
    image[16:32, 32:48] = (0, 255, 0)
    image[16:32, 48:64] = (0, 0, 255)
    return np.rint(image).astype(np.uint8)


def expected_images(outcome: str) -> int:
    """Number of images an "ok:N" outcome promises; 0 for a rejection code."""
    return int(outcome.removeprefix("ok:")) if outcome.startswith("ok:") else 0


def uid_for(name: str, part: str) -> str:
    """The deterministic UID the corpus gives `part` ("study", "series", "sop") of a file."""
    return generate_uid(entropy_srcs=["study"] if part == "study" else [name, part])


# --- DICOM ---------------------------------------------------------------------------------


def _op(path: Path, frames: np.ndarray | None = None, **kwargs: object) -> Path:
    """An Ophthalmic Photography file from the exporter, reproducible byte for byte."""
    kwargs.setdefault("extension", False)
    kwargs.setdefault("laterality", "R")
    return write_dicom_op(
        path,
        fundus_image() if frames is None else frames,
        patient_id=PATIENT_ID,
        patient_name="Corpus^Test",
        study_uid=uid_for(path.name, "study"),
        series_uid=uid_for(path.name, "series"),
        sop_uid=uid_for(path.name, "sop"),
        clinical_text=CLINICAL_TEXT,
        acquired=ACQUIRED,
        **kwargs,  # type: ignore[arg-type]
    )


def _other_dicom(
    path: Path,
    sop_class: UID,
    modality: str,
    pixels: np.ndarray | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
) -> Dataset:
    """A minimal DICOM object written with pydicom; returned so callers can alter and rewrite."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid_for(path.name, "sop")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid_for(path.name, "sop")
    ds.StudyInstanceUID = uid_for(path.name, "study")
    ds.SeriesInstanceUID = uid_for(path.name, "series")
    ds.Modality = modality
    ds.PatientID = PATIENT_ID
    ds.PatientName = "Corpus^Test"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _grayscale_volume(bits: int) -> np.ndarray:
    """A CT/MR-like slice: one channel, `bits` deep."""
    return (fundus_image()[..., 0].astype(np.uint16) << (bits - 8)).astype(np.uint16)


def _op_16bit(path: Path) -> None:
    """Ophthalmic Photography 16 Bit, 12 bits stored: 8-bit values rescaled exactly."""
    pixels = np.rint(fundus_image().astype(np.float64) * 4095 / 255).astype(np.uint16)
    _other_dicom(path, OP_16BIT, "OP", pixels, "RGB", bits_stored=12)


def _op_mpeg2(path: Path) -> None:
    """An OP header whose pixels claim MPEG-2 video, which no installed plugin decodes."""
    ds = _other_dicom(path, OP_8BIT, "OP", fundus_image(), "RGB")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _rewritten(
    path: Path,
    change: Callable[[Dataset], None],
    frames: np.ndarray | None = None,
    **kwargs: object,
) -> None:
    """Write a valid OP file, apply `change` to it and save it again."""
    _op(path, frames, **kwargs)
    ds = dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _drop_pixel_data(ds: Dataset) -> None:
    del ds.PixelData


def _deflate(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def _claim_frames(count: int) -> Callable[[Dataset], None]:
    """A change that makes Number of Frames disagree with the encapsulated fragments."""
    return lambda ds: setattr(ds, "NumberOfFrames", count)


def _cut(write: Callable[[Path], object], fraction: float) -> Callable[[Path], None]:
    """A writer that writes a file with `write` and keeps only its first `fraction`."""

    def cut(path: Path) -> None:
        write(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return cut


def _claims_larger(syntax: str) -> Callable[[Path], None]:
    """An OP file whose codestream says 60000x60000 while its header says 128x96.

    The size fields sit 5 bytes into a JPEG SOFn or JPEG-LS SOF55 segment (Y then X, two
    bytes each) and 8 bytes into a JPEG 2000 SIZ segment (Xsiz then Ysiz, four each).
    """
    marker, offset, fmt = {
        "jpeg-baseline": (b"\xff\xc0", 5, ">HH"),
        "jpeg-ls": (b"\xff\xf7", 5, ">HH"),
        "jpeg2000": (b"\xff\x4f\xff\x51", 8, ">LL"),
    }[syntax]

    def write(path: Path) -> None:
        _op(path, transfer_syntax=syntax)
        data = bytearray(path.read_bytes())
        struct.pack_into(fmt, data, data.rindex(marker) + offset, 60_000, 60_000)
        path.write_bytes(bytes(data))

    return write


def _fragments(path: Path, fragments: list[bytes], frames: int) -> None:
    """A JPEG baseline OP file whose Pixel Data holds `fragments`, claiming `frames` frames."""

    def change(ds: Dataset) -> None:
        # An empty Basic Offset Table, then the fragments (pydicom will not write empty ones).
        ds.PixelData = b"".join(itemize_fragment(f) for f in [b"", *fragments])
        ds.NumberOfFrames = frames

    _rewritten(path, change, transfer_syntax="jpeg-baseline")


def _empty_fragments(real_frames: int, frames: int) -> Callable[[Path], None]:
    """`real_frames` JPEG frames followed by 3,000 empty fragments, claiming `frames`."""

    def write(path: Path) -> None:
        frame = Image.fromarray(fundus_image())
        jpeg = BytesIO()
        frame.save(jpeg, "JPEG", quality=95, subsampling="4:2:2")
        _fragments(path, [jpeg.getvalue()] * real_frames + [b""] * 3000, frames)

    return write


def _no_preamble(path: Path) -> None:
    """A valid OP file without the 128-byte preamble and "DICM" prefix."""
    _op(path)
    path.write_bytes(path.read_bytes()[132:])


# --- raster files --------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **params: object) -> Callable[[Path], None]:
    return lambda path: image.save(path, fmt, **params)


def _raster_claims_larger(fmt: str) -> Callable[[Path], None]:
    """A small JPEG or TIFF whose header says 60000x60000, where Pillow reads its size."""

    def write(path: Path) -> None:
        data = BytesIO()
        _RGB.save(data, fmt)
        patched = bytearray(data.getvalue())
        if fmt == "JPEG":
            struct.pack_into(">HH", patched, patched.index(b"\xff\xc0") + 5, 60_000, 60_000)
        else:  # the first directory's ImageWidth (256) and ImageLength (257), as LONGs
            for tag in (256, 257):
                entry = patched.index(struct.pack("<HHL", tag, 4, 1))
                struct.pack_into("<L", patched, entry + 8, 60_000)
        path.write_bytes(bytes(patched))

    return write


def _rotated_jpeg(path: Path) -> None:
    """Stored lying on its side, with EXIF orientation 6 saying how to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(fundus_image()).transpose(Image.Transpose.ROTATE_90)
    stored.save(path, "JPEG", quality=95, exif=exif)


def _png_bomb(path: Path) -> None:
    """A tiny PNG whose header claims 100000 x 100000 RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


_RGB = Image.fromarray(fundus_image())
_THREE_FRAMES = np.stack([fundus_image(k) for k in range(3)])

# File name -> (writer, expected outcome).
_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "fundus.jpg": (_save(_RGB, "JPEG", quality=95), "ok:1"),
    "fundus.png": (_save(_RGB, "PNG"), "ok:1"),
    "fundus.tif": (_save(_RGB, "TIFF", compression="tiff_lzw"), "ok:1"),
    "fundus_rotated.jpg": (_rotated_jpeg, "ok:1"),
    "fundus_rgba.png": (_save(_RGB.convert("RGBA"), "PNG"), "ok:1"),
    "fundus_palette.png": (_save(_RGB.quantize(256, dither=Image.Dither.NONE), "PNG"), "ok:1"),
    "fundus_cmyk.jpg": (_save(_RGB.convert("CMYK"), "JPEG", quality=95), "ok:1"),
    "op_explicit.dcm": (_op, "ok:1"),
    "op_rle.dcm": (lambda p: _op(p, transfer_syntax="rle"), "ok:1"),
    "op_jpeg_baseline.dcm": (lambda p: _op(p, transfer_syntax="jpeg-baseline"), "ok:1"),
    "op_jpeg_ls.dcm": (lambda p: _op(p, transfer_syntax="jpeg-ls"), "ok:1"),
    "op_jpeg2000.dcm": (lambda p: _op(p, transfer_syntax="jpeg2000"), "ok:1"),
    "op_deflated.dcm": (lambda p: _rewritten(p, _deflate), "ok:1"),
    "OP_NO_EXTENSION": (_op, "ok:1"),
    "op_no_preamble.dcm": (_no_preamble, "ok:1"),
    "op_multiframe.dcm": (lambda p: _op(p, _THREE_FRAMES, transfer_syntax="rle"), "ok:3"),
    "sc_colour.dcm": (lambda p: _op(p, sop_class="sc"), "ok:1"),
    "op_16bit.dcm": (_op_16bit, "ok:1"),
    "empty.dcm": (_bytes(b""), "empty_file"),
    "truncated.jpg": (_cut(_save(_RGB, "JPEG", quality=95), 0.6), "truncated"),
    "truncated.png": (_cut(_save(_RGB, "PNG"), 0.6), "truncated"),
    "truncated.tif": (_cut(_save(_RGB, "TIFF"), 0.6), "truncated"),  # directory first
    "truncated_lzw.tif": (_cut(_save(_RGB, "TIFF", compression="tiff_lzw"), 0.6), "truncated"),
    "truncated.dcm": (_cut(_op, 0.7), "truncated"),
    "truncated_rle.dcm": (_cut(lambda p: _op(p, transfer_syntax="rle"), 0.8), "truncated"),
    "truncated_header.dcm": (_cut(_op, 0.02), "truncated"),
    "truncated_deflated.dcm": (_cut(lambda p: _rewritten(p, _deflate), 0.5), "truncated"),
    "op_frames_missing.dcm": (
        lambda p: _rewritten(p, _claim_frames(4), _THREE_FRAMES, transfer_syntax="rle"),
        "truncated",
    ),
    "op_offset_table_mismatch.dcm": (
        lambda p: _rewritten(p, _claim_frames(2), _THREE_FRAMES, transfer_syntax="rle"),
        "decode_error",
    ),
    "notes.jpg": (_bytes(b"Screening notes: camera 2 was recalibrated.\n"), "not_an_image"),
    "random.bin": (_bytes(np.random.default_rng(7).bytes(4096)), "not_an_image"),
    "report.pdf": (
        _bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
        "not_an_image",
    ),
    "animation.gif": (_save(_RGB, "GIF"), "unsupported_format"),
    "ct.dcm": (
        lambda p: _other_dicom(p, CT_IMAGE, "CT", _grayscale_volume(12), bits_stored=12),
        "unsupported_modality",
    ),
    "mr.dcm": (
        lambda p: _other_dicom(p, MR_IMAGE, "MR", _grayscale_volume(12), bits_stored=12),
        "unsupported_modality",
    ),
    "sr.dcm": (lambda p: _other_dicom(p, COMPREHENSIVE_SR, "SR"), "unsupported_modality"),
    "rtstruct.dcm": (
        lambda p: _other_dicom(p, RT_STRUCTURE_SET, "RTSTRUCT"),
        "unsupported_modality",
    ),
    "sc_grayscale_multiframe.dcm": (
        lambda p: _other_dicom(p, GRAYSCALE_BYTE_SC, "OT", np.stack([fundus_image()[..., 1]] * 2)),
        "unsupported_sop_class",
    ),
    "op_no_pixel_data.dcm": (lambda p: _rewritten(p, _drop_pixel_data), "no_pixel_data"),
    "op_red_free.dcm": (
        lambda p: _other_dicom(p, OP_8BIT, "OP", fundus_image()[..., 1]),
        "grayscale",
    ),
    "op_mpeg2.dcm": (_op_mpeg2, "unsupported_transfer_syntax"),
    "grayscale.jpg": (_save(_RGB.convert("L"), "JPEG", quality=95), "grayscale"),
    "bomb.png": (_png_bomb, "too_large"),
    "tiny.png": (_save(_RGB.resize((48, 32)), "PNG"), "too_small"),
    # Decoding bombs: each would cost a decoder gigabytes if trusted.
    "bomb.jpg": (_raster_claims_larger("JPEG"), "too_large"),
    "bomb.tif": (_raster_claims_larger("TIFF"), "too_large"),
    "op_jpeg_bomb.dcm": (_claims_larger("jpeg-baseline"), "codestream_mismatch"),
    "op_jpeg_ls_bomb.dcm": (_claims_larger("jpeg-ls"), "codestream_mismatch"),
    "op_jpeg2000_bomb.dcm": (_claims_larger("jpeg2000"), "codestream_mismatch"),
    "op_65_frames.dcm": (_empty_fragments(65, 65), "too_many_frames"),
    "op_3015_frames.dcm": (_empty_fragments(15, 3015), "too_many_frames"),
    "op_empty_fragments.dcm": (_empty_fragments(0, 3), "codestream_mismatch"),
}
# The decoding bombs above, which tests/mdf/imaging/test_decode_bounds.py decodes.
HOSTILE = frozenset(
    {
        "bomb.png",
        "bomb.jpg",
        "bomb.tif",
        "op_jpeg_bomb.dcm",
        "op_jpeg_ls_bomb.dcm",
        "op_jpeg2000_bomb.dcm",
        "op_65_frames.dcm",
        "op_3015_frames.dcm",
        "op_empty_fragments.dcm",
    }
)

EXPECTED: dict[str, str] = {name: outcome for name, (_, outcome) in _FILES.items()}
LOSSLESS = frozenset(
    {
        "fundus.png",
        "fundus.tif",
        "fundus_rgba.png",
        "fundus_palette.png",  # fewer than 256 colours, so the palette is exact
        "op_explicit.dcm",
        "op_rle.dcm",
        "op_jpeg_ls.dcm",
        "op_jpeg2000.dcm",
        "op_deflated.dcm",
        "OP_NO_EXTENSION",
        "op_no_preamble.dcm",
        "op_multiframe.dcm",
        "sc_colour.dcm",
        "op_16bit.dcm",
    }
)


def build_corpus(directory: Path) -> dict[str, str]:
    """Write every corpus file into `directory`; return file name -> expected outcome."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (write, _) in _FILES.items():
        write(directory / name)
    return dict(EXPECTED)
