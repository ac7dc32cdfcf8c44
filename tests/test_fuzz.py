"""A bounded, reproducible fuzz run over what reads hostile input: probing and decoding
files, and reading manifests. Every input must end in a result or a `Rejection`, never in
another exception and never slowly. Hypothesis is derandomised (a fixed seed derived from
each test) with an example count sized to about a minute in all, so CI runs the same inputs
every time; a crash found here is fixed in the code and kept below as a regression example.

The hostile corpus the fuzzer starts next to lives in tests/corpus.py, built at test time.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from corpus import fundus_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from db.lifecycle import ReasonCode
from mdf.imaging import Rejection, decode_frame, probe
from mdf.imaging.dicom_writer import write_dicom_op
from scheduler.manifest import COLUMNS, MANIFEST_NAME, Manifests

# Damaged headers make pydicom warn; a verdict is what matters. A real hang fails the run.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(300)]
MAX_PIXELS = 1_000_000  # keeps a fuzzed header's honest allocation small
FUZZ = settings(
    derandomize=True,
    deadline=2000,  # milliseconds per example: a slow input is a failure too
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _raster(fmt: str, **params: object) -> Callable[[Path], bytes]:
    def write(_: Path) -> bytes:
        out = io.BytesIO()
        Image.fromarray(fundus_image()).save(out, fmt, **params)
        return out.getvalue()

    return write


def _dicom(syntax: str, frames: int = 1) -> Callable[[Path], bytes]:
    def write(folder: Path) -> bytes:
        pixels = np.stack([fundus_image(k) for k in range(frames)])
        path = write_dicom_op(folder / syntax, pixels, transfer_syntax=syntax, laterality="R")
        return path.read_bytes()

    return write


SEEDS = {
    "jpeg": _raster("JPEG", quality=90),
    "png": _raster("PNG"),
    "tiff": _raster("TIFF", compression="tiff_lzw"),
    "dicom": _dicom("explicit"),
    "dicom-rle-3": _dicom("rle", frames=3),
    "dicom-jpeg-2": _dicom("jpeg-baseline", frames=2),
    "dicom-jpeg-ls": _dicom("jpeg-ls"),
    "dicom-jpeg2000": _dicom("jpeg2000"),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    return {name: write(folder) for name, write in SEEDS.items()}


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A valid file with a few bytes flipped, inserted or removed, or its end cut off."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 4))):
        # Headers are where parsers decide what to allocate: aim there half the time.
        at = draw(st.one_of(st.integers(0, 700), st.integers(0, len(data)))) % (len(data) + 1)
        edit = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00" * 4, b"\xff"]))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "cut":
            del data[at:]
    return bytes(data)


def check_verdicts(data: bytes) -> None:
    """`probe` and `decode_frame` end in a result or a Rejection, and agree on a result."""
    try:
        probed = probe(Path("fuzzed"), data=data, max_pixels=MAX_PIXELS)
    except Rejection as rejection:
        assert rejection.reason
    else:
        assert probed.images and all(i.width * i.height <= MAX_PIXELS for i in probed.images)
    try:
        pixels = decode_frame(data, max_pixels=MAX_PIXELS)
    except Rejection as rejection:
        assert rejection.reason
    else:
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
        assert pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS


@settings(FUZZ, max_examples=1500)
@given(data=st.data())
def test_probe_and_decode_of_mutated_files_end_in_a_verdict(
    seeds: dict[str, bytes], data: st.DataObject
) -> None:
    check_verdicts(data.draw(mutated(seeds)))


@settings(FUZZ, max_examples=150)
@given(content=st.binary(max_size=2048))
def test_probe_and_decode_of_arbitrary_bytes_end_in_a_verdict(content: bytes) -> None:
    check_verdicts(content)


_CELL = st.one_of(
    st.sampled_from(["a.jpg", "../outside.jpg", "/etc/passwd", "L", "OD", "left", "", " "]),
    st.text(max_size=40),
    st.text(min_size=300, max_size=600, alphabet="x"),  # longer than any column
)


@st.composite
def manifest_bytes(draw: st.DrawFn) -> bytes:
    """CSV built from the real columns and odd cells, or plain arbitrary bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=1024))
    header = draw(st.lists(st.sampled_from([*COLUMNS, "extra", ""]), min_size=1, max_size=8))
    rows = draw(st.lists(st.lists(_CELL, max_size=9), max_size=6))
    text = "\n".join(",".join(row) for row in [header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@settings(FUZZ, max_examples=200)
@given(content=manifest_bytes())
def test_manifest_of_arbitrary_content_ends_in_rows_or_a_rejection(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(content)
    manifests = Manifests(tmp_path)
    try:
        manifests.add(str(path), path.read_bytes())
    except Rejection as rejection:
        assert rejection.code == ReasonCode.UNREADABLE_MANIFEST
        return
    for target, row in manifests.rows.items():
        assert Path(target).is_relative_to(tmp_path) and row.line >= 2
    assert all(bad.reason and bad.line >= 2 for bad in manifests.bad)
