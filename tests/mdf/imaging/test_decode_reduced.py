"""Decoding reduced: a JPEG at 1/2, 1/4 or 1/8 of its size when fewer pixels will do, with
the image's own size beside the pixels, the limits applied to the size the file declares,
and every other format decoded whole."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from corpus import fundus_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from db.lifecycle import ReasonCode
from mdf.imaging import Rejection, decode_frame, decode_reduced
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.synthetic.fundus import generate_case

WIDTH, HEIGHT = 3504, 2336  # a 10 MP fundus camera
_ORIENTATION = 0x0112


def camera_photograph() -> np.ndarray:
    """A fundus at the frame's height, centred on black, as cameras frame it."""
    frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    left = (WIDTH - HEIGHT) // 2
    frame[:, left : left + HEIGHT] = generate_case(0, size=HEIGHT, with_text=False).image
    return frame


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    buffer = BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[_ORIENTATION] = orientation
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photograph() -> np.ndarray:
    return camera_photograph()


@pytest.fixture(scope="module")
def camera_jpeg(photograph: np.ndarray) -> bytes:
    return jpeg(photograph)


def boxed(pixels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``pixels`` area-averaged to ``shape``'s height and width."""
    size = (shape[1], shape[0])
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX)).astype(int)


@pytest.mark.parametrize(
    ("long_side", "scale"),
    [(5000, 1), (3504, 1), (1753, 1), (1752, 2), (877, 2), (876, 4), (439, 4), (438, 8), (9, 8)],
)
def test_a_jpeg_decodes_at_the_smallest_scale_that_keeps_the_long_side(
    camera_jpeg: bytes, long_side: int, scale: int
) -> None:
    decoded = decode_reduced(camera_jpeg, long_side=long_side)
    assert decoded.size == (WIDTH, HEIGHT)
    assert decoded.pixels.shape == (HEIGHT // scale, WIDTH // scale, 3)
    assert decoded.pixels.dtype == np.uint8


def test_the_reduced_pixels_are_the_full_decode_area_averaged(camera_jpeg: bytes) -> None:
    """libjpeg's scaled inverse DCT is a low-pass filter, close to averaging each block."""
    full = decode_frame(camera_jpeg)
    for side in (1752, 876, 438):
        reduced = decode_reduced(camera_jpeg, long_side=side).pixels
        difference = np.abs(reduced.astype(int) - boxed(full, reduced.shape))
        assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 3, side


def test_a_jpeg_turned_by_its_exif_orientation_reports_its_upright_size(
    photograph: np.ndarray,
) -> None:
    stored = np.ascontiguousarray(np.rot90(photograph))  # on its side; 6 turns it back
    data = jpeg(stored, orientation=6)
    decoded = decode_reduced(data, long_side=512)
    assert decoded.size == (WIDTH, HEIGHT)
    assert decoded.pixels.shape == (HEIGHT // 4, WIDTH // 4, 3)
    assert np.abs(decoded.pixels.astype(int) - boxed(photograph, decoded.pixels.shape)).mean() < 1


def test_the_pixel_limit_applies_to_the_declared_size(camera_jpeg: bytes) -> None:
    """A decompression bomb is refused before decoding, however small it would decode."""
    with pytest.raises(Rejection) as caught:
        decode_reduced(camera_jpeg, long_side=64, max_pixels=WIDTH * HEIGHT - 1)
    assert caught.value.code == ReasonCode.TOO_LARGE
    assert decode_reduced(camera_jpeg, long_side=64, max_pixels=WIDTH * HEIGHT).size == (
        WIDTH,
        HEIGHT,
    )


def test_a_small_jpeg_and_other_formats_decode_whole(tmp_path: Path) -> None:
    """PNG and TIFF have no reduced decoding; DICOM frames, JPEG ones included, go through
    pydicom's decoders whole; a JPEG already small enough is decoded as it is."""
    pixels = generate_case(1, size=320, with_text=False).image[:, :300]
    files = {"jpeg": jpeg(pixels)}
    for form in ("PNG", "TIFF"):
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, form)
        files[form] = buffer.getvalue()
    files["dicom"] = write_dicom_op(
        tmp_path / "eye.dcm", pixels, laterality="R", transfer_syntax="jpeg-baseline"
    ).read_bytes()
    for kind, data in files.items():
        long_side = 320 if kind == "jpeg" else 64
        decoded = decode_reduced(data, long_side=long_side)
        np.testing.assert_array_equal(decoded.pixels, decode_frame(data), err_msg=kind)
        assert decoded.size == (300, 320), kind


def test_a_long_side_below_one_is_a_programming_error(camera_jpeg: bytes) -> None:
    with pytest.raises(ValueError, match="long_side"):
        decode_reduced(camera_jpeg, long_side=0)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    derandomize=True,
    deadline=2000,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_damaged_jpeg_decoded_reduced_ends_in_a_verdict(data: st.DataObject) -> None:
    """As tests/test_fuzz.py does for full decoding: bytes flipped, set or cut, anywhere
    or in the header, end in pixels no larger than the declared size, or a Rejection."""
    buffer = BytesIO()
    Image.fromarray(fundus_image()).save(buffer, "JPEG", quality=90)
    content = bytearray(buffer.getvalue())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.one_of(st.integers(0, 700), st.integers(0, len(content) - 1)))
        at %= len(content)
        edit = data.draw(st.sampled_from(["flip", "set", "cut"]))
        if edit == "flip":
            content[at] ^= 1 << data.draw(st.integers(0, 7))
        elif edit == "set":
            content[at : at + 2] = data.draw(st.sampled_from([b"\xff\xff", b"\x00\x00"]))
        else:
            del content[max(at, 1) :]
    try:
        decoded = decode_reduced(bytes(content), long_side=16, max_pixels=1_000_000)
    except Rejection as rejection:
        assert rejection.reason
    else:
        width, height = decoded.size
        assert width * height <= 1_000_000
        assert decoded.pixels.shape[0] <= height and decoded.pixels.shape[1] <= width
