"""Probing and decoding incoming files: every corpus file gets its outcome, pixels come back
right, and real-world DICOM from many vendors ends in a ProbedFile or a Rejection."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from corpus import (
    CLINICAL_TEXT,
    EXPECTED,
    HEIGHT,
    LOSSLESS,
    PATIENT_ID,
    RED_PATCH,
    WIDTH,
    build_corpus,
    expected_images,
    fundus_image,
    uid_for,
)
from PIL import Image

from mdf.imaging import ProbedFile, Rejection, load_frame, probe

ACCEPTED = sorted(name for name, outcome in EXPECTED.items() if expected_images(outcome))
REJECTED = sorted(name for name in EXPECTED if name not in ACCEPTED)
# Mean absolute difference allowed for lossy files (JPEG at quality 95 gives about 2-3).
LOSSY_TOLERANCE = 5.0
RASTER_KINDS = {".jpg": "jpeg", ".png": "png", ".tif": "tiff"}
DICOM_FACTS = (
    "sop_class_uid",
    "modality",
    "study_uid",
    "series_uid",
    "sop_uid",
    "patient_id",
    "laterality",
    "clinical_text",
)
PYDICOM_FILES = sorted(
    Path(name) for name in pydicom.data.get_testdata_files() if Path(name).is_file()
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    assert build_corpus(directory) == EXPECTED
    return directory


def test_corpus_is_reproducible(corpus_dir: Path, tmp_path: Path) -> None:
    build_corpus(tmp_path)
    changed = [n for n in EXPECTED if (tmp_path / n).read_bytes() != (corpus_dir / n).read_bytes()]
    assert changed == []


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_file_is_probed(corpus_dir: Path, name: str) -> None:
    path = corpus_dir / name
    probed = probe(path)
    assert probed.kind == RASTER_KINDS.get(path.suffix, "dicom")
    assert [(i.frame, i.width, i.height) for i in probed.images] == [
        (k, WIDTH, HEIGHT) for k in range(expected_images(EXPECTED[name]))
    ]


@pytest.mark.parametrize("name", REJECTED)
def test_rejected_file_gets_its_code(corpus_dir: Path, name: str) -> None:
    with pytest.raises(Rejection) as caught:
        probe(corpus_dir / name)
    assert caught.value.code == EXPECTED[name], caught.value.reason
    assert caught.value.reason


@pytest.mark.parametrize("name", ACCEPTED)
def test_load_frame_returns_the_written_pixels(corpus_dir: Path, name: str) -> None:
    for k in range(expected_images(EXPECTED[name])):
        pixels, written = load_frame(corpus_dir / name, k), fundus_image(k)
        assert pixels.shape == written.shape and pixels.dtype == np.uint8
        if name in LOSSLESS:
            np.testing.assert_array_equal(pixels, written)
        else:
            assert np.abs(pixels.astype(int) - written).mean() < LOSSY_TOLERANCE
        red, green, blue = pixels[RED_PATCH].reshape(-1, 3).mean(axis=0)
        assert red > 200 and green < 60 and blue < 60, (red, green, blue)


def test_multiframe_frames_differ_and_stop_at_three(corpus_dir: Path) -> None:
    path = corpus_dir / "op_multiframe.dcm"
    np.testing.assert_array_equal(load_frame(path, 2), fundus_image(2))
    assert not np.array_equal(fundus_image(2), fundus_image(0))
    with pytest.raises(Rejection, match="frame 3") as caught:
        load_frame(path, 3)
    assert caught.value.code == "decode_error"


def test_dicom_header_facts(corpus_dir: Path) -> None:
    probed = probe(corpus_dir / "op_jpeg_baseline.dcm")
    assert (probed.kind, probed.modality, probed.laterality) == ("dicom", "OP", "R")
    assert probed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    assert (probed.study_uid, probed.series_uid, probed.sop_uid) == tuple(
        uid_for("op_jpeg_baseline.dcm", part) for part in ("study", "series", "sop")
    )
    assert (probed.patient_id, probed.clinical_text) == (PATIENT_ID, CLINICAL_TEXT)


def test_16bit_colour_is_rescaled_by_bits_stored(corpus_dir: Path) -> None:
    probed = probe(corpus_dir / "op_16bit.dcm")
    assert probed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.5.2"
    np.testing.assert_array_equal(load_frame(corpus_dir / "op_16bit.dcm"), fundus_image())


def test_raster_files_carry_no_dicom_facts(corpus_dir: Path) -> None:
    probed = probe(corpus_dir / "fundus.png")
    assert [getattr(probed, fact) for fact in DICOM_FACTS] == [None] * len(DICOM_FACTS)


def test_exif_orientation_turns_the_jpeg_upright(corpus_dir: Path) -> None:
    path = corpus_dir / "fundus_rotated.jpg"
    with Image.open(path) as stored:
        assert stored.size == (HEIGHT, WIDTH)  # stored on its side
    assert (probe(path).images[0].width, probe(path).images[0].height) == (WIDTH, HEIGHT)
    assert load_frame(path).shape == (HEIGHT, WIDTH, 3)


def test_probe_reads_given_bytes_instead_of_the_file(corpus_dir: Path, tmp_path: Path) -> None:
    data = (corpus_dir / "op_explicit.dcm").read_bytes()
    probed = probe(tmp_path / "never-written", data=data)
    assert [(i.width, i.height) for i in probed.images] == [(WIDTH, HEIGHT)]


def test_bytes_after_a_whole_jpeg_are_tolerated(corpus_dir: Path) -> None:
    data = (corpus_dir / "fundus.jpg").read_bytes() + bytes(16) + b"camera trailer"
    assert probe(corpus_dir / "fundus.jpg", data=data).images


@pytest.mark.parametrize("name", ["fundus.png", "fundus.jpg", "fundus.tif", "op_explicit.dcm"])
def test_size_limits(corpus_dir: Path, name: str) -> None:
    # One pixel over the limit lies in Pillow's warning band (up to twice the limit).
    with pytest.raises(Rejection) as caught:
        probe(corpus_dir / name, max_pixels=WIDTH * HEIGHT - 1)
    assert caught.value.code == "too_large"
    with pytest.raises(Rejection) as caught:
        probe(corpus_dir / name, min_side=HEIGHT + 1)
    assert caught.value.code == "too_small"
    assert probe(corpus_dir / name, max_pixels=WIDTH * HEIGHT, min_side=HEIGHT).images


@pytest.mark.parametrize("name", ["grayscale.jpg", "op_red_free.dcm", "bomb.png", "notes.jpg"])
def test_load_frame_applies_the_probe_policy(corpus_dir: Path, name: str) -> None:
    with pytest.raises(Rejection) as caught:
        load_frame(corpus_dir / name)
    assert caught.value.code == EXPECTED[name]


@pytest.mark.parametrize(
    ("name", "marker", "damage"),
    [
        ("op_jpeg_baseline.dcm", b"\xff\xc0\x00\x11", b"\xff\xc0\x00\x11\x00"),  # precision 0
        ("fundus.png", b"IDAT", b"IDAT\x00\x00\x00\x00"),  # deflate stream header
    ],
)
def test_damaged_pixels_pass_probe_but_fail_decoding(
    corpus_dir: Path, tmp_path: Path, name: str, marker: bytes, damage: bytes
) -> None:
    data = (corpus_dir / name).read_bytes()
    position = data.index(marker)
    damaged = tmp_path / name
    damaged.write_bytes(data[:position] + damage + data[position + len(damage) :])
    assert probe(damaged).images
    with pytest.raises(Rejection) as caught:
        load_frame(damaged)
    assert caught.value.code == "decode_error"
    assert "cannot be decoded" in caught.value.reason


@pytest.mark.parametrize(
    "name",
    ["fundus.jpg", "fundus.png", "fundus.tif", "op_explicit.dcm", "op_rle.dcm", "op_deflated.dcm"],
)
def test_every_cut_is_reported_as_truncated(corpus_dir: Path, name: str) -> None:
    data = (corpus_dir / name).read_bytes()
    # From past the DICOM preamble to a few bytes short of the end. A cut exactly between
    # two header elements leaves a well-formed data set without Pixel Data, which cannot
    # be told from one that never had any.
    for cut in np.linspace(132, len(data) - 3, 40).astype(int):
        with pytest.raises(Rejection) as caught:
            probe(corpus_dir / name, data=data[:cut])
        assert caught.value.code in ("truncated", "no_pixel_data"), (cut, caught.value.reason)


def test_rejection_codes_are_checked_and_survive_pickling() -> None:
    with pytest.raises(ValueError, match="unknown rejection code"):
        Rejection("misspelt", "a reason")
    copy = pickle.loads(pickle.dumps(Rejection("truncated", "cut short")))
    assert (copy.code, copy.reason, str(copy)) == ("truncated", "cut short", "truncated: cut short")


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=[path.name for path in PYDICOM_FILES])
def test_pydicom_test_file_ends_in_a_verdict(path: Path) -> None:
    try:
        probed = probe(path)
    except Rejection as rejection:
        assert rejection.reason
        return
    assert isinstance(probed, ProbedFile) and probed.images
    try:
        pixels = load_frame(path, probed.images[-1].frame)
    except Rejection as rejection:
        assert rejection.reason
        return
    assert pixels.shape == (probed.images[-1].height, probed.images[-1].width, 3)
    assert pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "ok:1"),
        ("SC_rgb_rle_16bit_2frame.dcm", "ok:2"),
        ("SC_ybr_full_422_uncompressed.dcm", "ok:1"),
        ("CT_small.dcm", "unsupported_modality"),
        ("MR_truncated.dcm", "unsupported_modality"),
        ("rtplan_truncated.dcm", "truncated"),
        ("test-SR.dcm", "unsupported_modality"),
        ("image_dfl.dcm", "grayscale"),
        ("SC_rgb_rle_32bit.dcm", "unsupported_format"),
        ("SC_rgb_small_odd.dcm", "too_small"),
        ("DICOMDIR", "unsupported_sop_class"),
        ("README.txt", "not_an_image"),
    ],
)
def test_pydicom_test_file_outcomes(name: str, outcome: str) -> None:
    path = Path(pydicom.data.get_testdata_file(name))
    try:
        got = f"ok:{len(probe(path).images)}"
    except Rejection as rejection:
        got = rejection.code
    assert got == outcome
