"""DICOM export: every transfer syntax round-trips, carries the metadata and passes dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import OphthalmicPhotography8BitImageStorage, SecondaryCaptureImageStorage

from mdf.imaging.dicom import CLINICAL_TEXT_KEYWORD
from mdf.imaging.dicom_writer import LOSSLESS_SYNTAXES, TRANSFER_SYNTAXES, write_dicom_op

EXPECTED_PHOTOMETRIC = {"jpeg-baseline": "YBR_FULL_422", "jpeg2000": "YBR_RCT"}


def _frames(n: int | None) -> np.ndarray:
    """Smooth colour gradients (JPEG-friendly) that differ per frame and per channel."""
    yy, xx = np.mgrid[0:48, 0:64]
    frames = [
        np.stack([yy * 4 + k * 20, xx * 3, yy + xx + k * 30], axis=-1).astype(np.uint8)
        for k in range(n or 1)
    ]
    return np.stack(frames) if n else frames[0]


def _write(tmp_path: Path, frames: np.ndarray, **kwargs: object) -> Path:
    kwargs.setdefault("laterality", "R")
    return write_dicom_op(tmp_path / "img", frames, **kwargs)


@pytest.mark.parametrize("n_frames", [None, 3], ids=["single", "multi"])
@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_round_trip(tmp_path: Path, syntax: str, n_frames: int | None) -> None:
    frames = _frames(n_frames)
    path = _write(
        tmp_path,
        frames,
        transfer_syntax=syntax,
        patient_id="P001",
        patient_name="Doe^Jane",
        clinical_text="52-year-old woman, type 2 diabetes.",
    )
    ds = pydicom.dcmread(path)

    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    assert ds.SOPClassUID == OphthalmicPhotography8BitImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Modality, ds.PatientID, str(ds.PatientName)) == ("OP", "P001", "Doe^Jane")
    assert ds.ImageLaterality == "R"
    assert ds[CLINICAL_TEXT_KEYWORD].value == "52-year-old woman, type 2 diabetes."
    assert ds.PhotometricInterpretation == EXPECTED_PHOTOMETRIC.get(syntax, "RGB")
    assert (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored) == (3, 8, 8)
    assert ds.NumberOfFrames == (n_frames or 1)

    decoded = ds.pixel_array
    assert decoded.shape == frames.shape
    if syntax in LOSSLESS_SYNTAXES:
        np.testing.assert_array_equal(decoded, frames)
    else:
        error = np.abs(decoded.astype(int) - frames.astype(int))
        assert error.mean() < 1.5 and error.max() < 16
        assert ds.LossyImageCompression == "01"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize(
    ("syntax", "sop_class", "n_frames"),
    [(s, "op", 2) for s in sorted(TRANSFER_SYNTAXES)]
    + [(s, c, None) for s in sorted(TRANSFER_SYNTAXES) for c in ("op", "sc")],
)
def test_dciodvfy_finds_no_errors(
    tmp_path: Path, syntax: str, sop_class: str, n_frames: int | None
) -> None:
    path = _write(tmp_path, _frames(n_frames), transfer_syntax=syntax, sop_class=sop_class)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "Error" not in report, report


def test_secondary_capture(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(tmp_path, _frames(None), sop_class="sc", laterality=None))
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.Modality == "OT"
    assert "NumberOfFrames" not in ds and "ImageLaterality" not in ds
    with pytest.raises(ValueError, match="one frame"):
        _write(tmp_path, _frames(2), sop_class="sc")


def test_modality_override(tmp_path: Path) -> None:
    assert pydicom.dcmread(_write(tmp_path, _frames(None), modality="XC")).Modality == "XC"


@pytest.mark.parametrize(
    ("name", "extension", "expected"),
    [("img", True, "img.dcm"), ("img.DCM", True, "img.DCM"), ("IM0001", False, "IM0001")],
)
def test_extension(tmp_path: Path, name: str, extension: bool, expected: str) -> None:
    path = write_dicom_op(tmp_path / "a" / name, _frames(None), laterality="L", extension=extension)
    assert path == tmp_path / "a" / expected
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [expected]


def test_fixed_uids_and_time_give_identical_bytes(tmp_path: Path) -> None:
    fixed = {
        "study_uid": "1.2.3.1",
        "series_uid": "1.2.3.2",
        "sop_uid": "1.2.3.3",
        "acquired": datetime(2024, 3, 1, 9, 30),
    }
    a = write_dicom_op(tmp_path / "a", _frames(None), laterality="L", **fixed)
    b = write_dicom_op(tmp_path / "b", _frames(None), laterality="L", **fixed)
    assert a.read_bytes() == b.read_bytes()
    ds = pydicom.dcmread(a)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "1.2.3.1",
        "1.2.3.2",
        "1.2.3.3",
    )
    assert ds.AcquisitionDateTime == "20240301093000"


@pytest.mark.parametrize(
    ("frames", "kwargs", "match"),
    [
        (_frames(None), {"transfer_syntax": "jpeg-xl"}, "valid"),
        (_frames(None), {"sop_class": "ct"}, "valid"),
        (_frames(None), {"laterality": None}, "laterality"),
        (_frames(None), {"laterality": "U"}, "laterality"),
        (_frames(None).astype(np.float32), {}, "uint8"),
        (_frames(None)[..., 0], {}, "shape"),
    ],
)
def test_rejects_bad_input(
    tmp_path: Path, frames: np.ndarray, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _write(tmp_path, frames, **kwargs)
