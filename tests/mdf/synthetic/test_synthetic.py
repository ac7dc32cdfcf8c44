"""Synthetic fundus generator: determinism, anatomy, disease signs, text and dataset layout."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFilter

from mdf.imaging.dicom import CLINICAL_TEXT_KEYWORD
from mdf.imaging.dicom_writer import LOSSLESS_SYNTAXES, write_dicom_op
from mdf.synthetic.delivery import MASKS_COLUMNS, write_dataset
from mdf.synthetic.fundus import DISEASES, LABEL_OF, SyntheticCase, generate_case
from scheduler.manifest import COLUMNS

SIZE = 256
SEEDS = range(4)
ACQUIRED = DISEASES["acquired"]


def _cases(disease: str) -> list[SyntheticCase]:
    return [generate_case(seed, disease=disease, size=SIZE) for seed in SEEDS]


def _ring(mask: np.ndarray, width: int = 5) -> np.ndarray:
    """Pixels within `width` of `mask` but outside it: the local surround."""
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(width))
    return (np.asarray(grown) > 0) & ~mask


def _fov(size: int, fraction: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(xx - size / 2, yy - size / 2) < fraction * 0.46 * size


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = generate_case(7, size=SIZE)
    b = generate_case(np.random.default_rng(7), size=SIZE)
    c = generate_case(8, size=SIZE)
    for field in ("image", "vessel_mask", "lesion_mask"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert (a.disease, a.clinical_text, a.patient_id) == (b.disease, b.clinical_text, b.patient_id)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("size", [128, 300])
def test_shapes_and_dark_surround(size: int) -> None:
    case = generate_case(0, size=size)
    assert case.image.shape == (size, size, 3) and case.image.dtype == np.uint8
    assert case.vessel_mask.shape == case.lesion_mask.shape == (size, size)
    assert case.vessel_mask.dtype == case.lesion_mask.dtype == np.bool_
    outside = ~_fov(size, 1.02)
    assert case.image[outside].max() < 10
    assert not case.vessel_mask[outside].any() and not case.lesion_mask[outside].any()
    assert case.image[_fov(size, 0.9)].mean() > 60


@pytest.mark.parametrize("disease", sorted(LABEL_OF))
def test_vessel_mask_marks_darker_redder_pixels(disease: str) -> None:
    for case in _cases(disease):
        vessels = case.vessel_mask
        assert 0.005 < vessels.mean() < 0.15
        img = case.image.astype(float)
        ring = _ring(vessels) & ~case.lesion_mask
        green_in, green_out = img[vessels, 1].mean(), img[ring, 1].mean()
        assert green_in < 0.85 * green_out
        redness_in = (img[vessels, 0] / (img[vessels, 1] + 1)).mean()
        assert redness_in > (img[ring, 0] / (img[ring, 1] + 1)).mean()


@pytest.mark.parametrize("disease", sorted(LABEL_OF))
def test_lesion_mask_marks_pixels_unlike_their_surround(disease: str) -> None:
    for case in _cases(disease):
        lesions = case.lesion_mask & ~case.vessel_mask
        assert lesions.sum() > 20
        img = case.image.astype(float)
        ring = _ring(case.lesion_mask) & ~case.vessel_mask
        difference = np.abs(img[lesions].mean(axis=0) - img[ring].mean(axis=0))
        assert difference.max() > 25


@pytest.mark.parametrize(("laterality", "side"), [("R", 1), ("L", -1)])
def test_disc_is_nasal_and_mirrored_by_laterality(laterality: str, side: int) -> None:
    for seed in SEEDS:
        case = generate_case(seed, disease="glaucoma", size=SIZE, laterality=laterality)
        brightness = case.image.astype(float).sum(axis=-1)
        _, xs = np.nonzero(brightness >= np.quantile(brightness, 0.995))
        assert case.laterality == laterality
        assert side * (xs.mean() - SIZE / 2) > 0.15 * SIZE


def _periphery_pigment(case: SyntheticCase) -> float:
    """Share of mid-peripheral, non-vessel pixels that are near-black (low red)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(xx - SIZE / 2, yy - SIZE / 2) / (0.46 * SIZE)
    annulus = (r > 0.5) & (r < 0.9) & ~_ring(case.vessel_mask, 3) & ~case.vessel_mask
    return float((case.image[..., 0][annulus] < 60).mean())


def test_rp_has_peripheral_pigment_that_acquired_cases_lack() -> None:
    assert min(_periphery_pigment(c) for c in _cases("retinitis_pigmentosa")) > 0.005
    assert max(_periphery_pigment(c) for d in ACQUIRED for c in _cases(d)) < 0.001


def test_rp_vessels_are_attenuated() -> None:
    rp = np.mean([c.vessel_mask.mean() for c in _cases("retinitis_pigmentosa")])
    others = np.mean([c.vessel_mask.mean() for d in ACQUIRED for c in _cases(d)])
    assert rp < 0.7 * others


def _pale_area(case: SyntheticCase) -> int:
    """Pixels as pale as the optic cup (blue channel high): the cup's area."""
    return int((case.image[..., 2] > 170).sum())


def test_glaucoma_has_larger_cup() -> None:
    glaucoma = np.mean([_pale_area(c) for c in _cases("glaucoma")])
    healthy_discs = np.mean(
        [_pale_area(c) for d in ("diabetic_retinopathy", "amd") for c in _cases(d)]
    )
    assert glaucoma > 2 * healthy_discs


def _egg_yolk_area(case: SyntheticCase) -> float:
    """Share of pixels with the vitelliform lesion's saturated yellow-orange."""
    r, g, b = (case.image[..., i].astype(int) for i in range(3))
    return float(((r > 200) & (g > 150) & (g < 205) & (b < 62)).mean())


def test_best_disease_has_yellow_macular_lesion() -> None:
    assert min(_egg_yolk_area(c) for c in _cases("best_disease")) > 0.003
    others = [c for d in sorted(LABEL_OF) if d != "best_disease" for c in _cases(d)]
    assert max(_egg_yolk_area(c) for c in others) < 0.0005


def _age(text: str) -> int:
    match = re.match(r"(\d+)-year-old", text)
    assert match, text
    return int(match.group(1))


def test_clinical_text_follows_label_and_can_be_neutral_or_absent() -> None:
    cases = [generate_case(seed, size=64) for seed in range(60)]
    by_label = {
        label: [c.clinical_text for c in cases if c.label == label and c.clinical_text]
        for label in DISEASES
    }
    assert min(len(texts) for texts in by_label.values()) > 10
    ages = {label: np.mean([_age(t) for t in texts]) for label, texts in by_label.items()}
    assert ages["inherited"] < ages["acquired"] - 15
    affected = {
        label: np.mean(["affected" in t or "has the same" in t or "similar" in t for t in texts])
        for label, texts in by_label.items()
    }
    assert affected["inherited"] > affected["acquired"] + 0.3

    neutral = [generate_case(s, size=64, text_signal=0.0).clinical_text for s in range(10)]
    assert all(t and "routine screening" in t for t in neutral)
    assert generate_case(0, size=64, with_text=False).clinical_text is None


def test_label_and_disease_choice() -> None:
    assert generate_case(0, size=64, disease="stargardt").label == "inherited"
    for seed in range(6):
        assert generate_case(seed, size=64, label="acquired").disease in ACQUIRED
    with pytest.raises(ValueError, match="not acquired"):
        generate_case(0, size=64, label="acquired", disease="best_disease")
    with pytest.raises(ValueError, match="valid"):
        generate_case(0, size=64, disease="measles")
    with pytest.raises(ValueError, match="laterality"):
        generate_case(0, size=64, laterality="X")


@pytest.mark.parametrize("syntax", sorted(LOSSLESS_SYNTAXES))
def test_generated_image_survives_lossless_dicom(tmp_path: Path, syntax: str) -> None:
    case = generate_case(3, size=SIZE)
    path = write_dicom_op(
        tmp_path / "case", case.image, transfer_syntax=syntax, laterality=case.laterality
    )
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, case.image)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _load(path: Path) -> np.ndarray:
    if path.suffix == ".jpg":
        return np.asarray(Image.open(path).convert("RGB"))
    return pydicom.dcmread(path).pixel_array


def test_write_dataset_layout_manifest_and_masks(tmp_path: Path) -> None:
    out = write_dataset(
        tmp_path / "batch",
        7,
        seed=1,
        size=128,
        transfer_syntaxes=sorted(LOSSLESS_SYNTAXES),
        images_per_patient=2,
    )
    columns, rows = _read_csv(out / "manifest.csv")
    assert tuple(columns) == COLUMNS
    assert len(rows) == 7
    assert {Path(r["file"]).suffix for r in rows} == {".jpg", ".dcm", ""}  # JPEG, DICOM

    patients: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        patients.setdefault(row["patient_id"], []).append(row)
        assert len(Path(row["file"]).parts) == 4  # source/date/patient/file
        assert row["label"] in DISEASES and row["source"] == "synthetic"
    assert len(patients) == 4
    assert [p[0]["label"] for p in patients.values()] == ["acquired", "inherited"] * 2
    assert all({r["laterality"] for r in p} == {"L", "R"} for p in list(patients.values())[:3])
    assert all(len({r["clinical_text"] for r in p}) == 1 for p in patients.values())

    masks_dir = tmp_path / "batch-masks"  # beside the inbox, not in it
    assert not any(p.suffix == ".png" for p in out.rglob("*"))
    mask_columns, mask_rows = _read_csv(masks_dir / "masks.csv")
    assert tuple(mask_columns) == MASKS_COLUMNS
    assert [(masks_dir / m["image"]).resolve() for m in mask_rows] == [
        (out / r["file"]).resolve() for r in rows
    ]
    for row, masks in zip(rows, mask_rows, strict=True):
        assert (masks["label"], masks["source"]) == (row["label"], row["source"])
        image = _load(out / row["file"]).astype(float)
        vessel_png, lesion_png = masks["mask"].split(";")
        assert lesion_png.endswith("_lesion.png")
        vessels = np.asarray(Image.open(masks_dir / vessel_png)) > 0
        assert image[vessels, 1].mean() < 0.85 * image[_ring(vessels), 1].mean()
        if row["file"].endswith(".jpg"):
            continue
        ds = pydicom.dcmread(out / row["file"])
        assert (ds.PatientID, ds.ImageLaterality) == (row["patient_id"], row["laterality"])
        assert ds.get(CLINICAL_TEXT_KEYWORD, "") == row["clinical_text"]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_write_dataset_is_reproducible(tmp_path: Path) -> None:
    kwargs = {"size": 96, "transfer_syntaxes": ("jpeg-baseline", "rle"), "dicom_fraction": 0.7}
    first = _tree(write_dataset(tmp_path / "a", 4, seed=5, **kwargs))
    assert first == _tree(write_dataset(tmp_path / "b", 4, seed=5, **kwargs))
    assert first != _tree(write_dataset(tmp_path / "c", 4, seed=6, **kwargs))


def test_confound_ties_source_and_text_to_label(tmp_path: Path) -> None:
    out = write_dataset(
        tmp_path / "c", 8, size=64, sources=("fives", "atlas"), confound=1.0, write_masks=False
    )
    _, rows = _read_csv(out / "manifest.csv")
    for row in rows:
        inherited = row["label"] == "inherited"
        assert row["source"] == ("atlas" if inherited else "fives")
        assert bool(row["clinical_text"]) == inherited
    assert not (tmp_path / "c-masks").exists()

    plain = write_dataset(tmp_path / "p", 4, size=64, with_text=False, dicom_fraction=0.0)
    _, rows = _read_csv(plain / "manifest.csv")
    assert not any(r["clinical_text"] for r in rows)
