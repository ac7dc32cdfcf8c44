"""Gradability on real photographs: every STARE original passes, severe faults made from
them fail with the fault's reason, mild ones pass, and photographs of no fundus fail. And
the measures' cheaper computations give what the plain ones of numpy and scipy give."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mdf.imaging import quality
from mdf.imaging.quality import QualityReason, QualityThresholds, assess
from mdf.synthetic.degradations import MILD, NOT_FUNDUS, SEVERE
from mdf.synthetic.fundus import generate_case

STARE = Path(
    os.environ.get("MDF_STARE_DIR")
    or Path(__file__).resolve().parents[4] / "shared" / "data" / "stare"
)
R = QualityReason
# The reason each severe fault must give, and the share of photographs it must catch
# (calibration on all 20: bench/gradability.py).
EXPECTED: dict[str, tuple[set[QualityReason], float]] = {
    "defocus": ({R.OUT_OF_FOCUS}, 1.0),
    "motion_blur": ({R.OUT_OF_FOCUS}, 0.6),
    "under_exposure": ({R.TOO_DARK}, 1.0),
    "over_exposure": ({R.OVEREXPOSED, R.NO_FUNDUS}, 1.0),
    "eyelid": ({R.OCCLUDED}, 0.6),
    "small_pupil": ({R.SMALL_FIELD}, 1.0),
    "dirty_lens": ({R.HAZY, R.LOW_CONTRAST}, 1.0),
    "off_centre": ({R.OFF_CENTRE, R.NO_FUNDUS}, 1.0),
}


@pytest.fixture(scope="module")
def originals() -> list[np.ndarray]:
    paths = sorted((STARE / "images").glob("*.png"))
    if not paths:
        pytest.skip(f"STARE photographs not found in {STARE} (set MDF_STARE_DIR)")
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def test_every_original_is_gradable(originals: list[np.ndarray]) -> None:
    results = [assess(image) for image in originals]
    assert [q.reasons for q in results if not q.gradable] == []
    assert all(0.5 <= q.score <= 1 for q in results)


@pytest.mark.parametrize("fault", sorted(SEVERE))
def test_severe_fault_is_ungradable_for_its_reason(originals: list[np.ndarray], fault: str) -> None:
    reasons, share = EXPECTED[fault]
    results = [
        assess(SEVERE[fault](im, np.random.default_rng(i))) for i, im in enumerate(originals)
    ]
    caught = [q for q in results if not q.gradable]
    assert len(caught) >= share * len(results), Counter(r for q in results for r in q.reasons)
    assert all(q.score < 0.5 for q in caught)
    assert Counter(q.reasons[0] for q in caught).most_common(1)[0][0] in reasons
    with_reason = [q for q in caught if reasons & set(q.reasons)]
    assert len(with_reason) >= 0.8 * len(caught), [q.reasons for q in caught]


@pytest.mark.parametrize("fault", sorted(MILD))
def test_mild_fault_stays_gradable(originals: list[np.ndarray], fault: str) -> None:
    results = [assess(MILD[fault](im, np.random.default_rng(i))) for i, im in enumerate(originals)]
    assert sum(not q.gradable for q in results) <= 0.1 * len(results)


@pytest.mark.parametrize("kind", sorted(NOT_FUNDUS))
def test_not_a_fundus(kind: str) -> None:
    for seed in range(3):
        quality = assess(NOT_FUNDUS[kind]((605, 700), np.random.default_rng(seed)))
        assert quality.reasons == (R.NO_FUNDUS,)
        assert not quality.gradable and quality.score < 0.5


def test_thresholds_are_configurable(originals: list[np.ndarray]) -> None:
    image = originals[0]
    sharpness = assess(image).features["sharpness"]
    strict = replace(QualityThresholds(), min_sharpness=sharpness * 1.2)
    quality = assess(image, strict)
    assert not quality.gradable and quality.reasons == (R.OUT_OF_FOCUS,)


def test_synthetic_fundus_is_gradable_and_a_black_frame_is_not() -> None:
    for seed in range(4):
        quality = assess(generate_case(seed, size=512, with_text=False).image)
        assert quality.gradable, (quality.reasons, quality.features)
    black = assess(np.zeros((605, 700, 3), np.uint8))
    assert black.reasons == (R.NO_FUNDUS,) and not black.gradable


def test_rejects_anything_but_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        assess(np.zeros((64, 64), np.uint8))


def test_erosion_and_dilation_are_ndimage_s() -> None:
    rng = np.random.default_rng(0)
    for density in (0.3, 0.7, 0.95):
        mask = ndimage.gaussian_filter(rng.random((61, 83)), 2) > 1 - density
        mask[:, 0] = mask[-1] = True  # regions on the frame's edge
        for steps in (1, 2, 4):
            expected = ndimage.binary_erosion(mask, iterations=steps)
            assert np.array_equal(quality._erode(mask, steps), expected)
            expected = ndimage.binary_dilation(mask, iterations=steps)
            assert np.array_equal(quality._dilate(mask, steps), expected)


def test_bands_are_gaussian_filter_s(originals: list[np.ndarray]) -> None:
    green = originals[0][100:300, 150:420, 1].astype(np.float32) / 255
    blurred = [ndimage.gaussian_filter(green, sigma) for sigma in (0.7, 1.5, 6.0)]
    fine, coarse = quality._bands(green)
    np.testing.assert_allclose(fine, blurred[0] - blurred[1], atol=1e-6)
    np.testing.assert_allclose(coarse, blurred[1] - blurred[2], atol=1e-6)
    assert np.std(fine) > 1e-3 and np.std(coarse) > 1e-3  # not comparing noise to noise


def test_percentiles_are_numpy_s() -> None:
    rng = np.random.default_rng(1)
    for size in (1, 2, 7, 1000, 1001):
        levels = rng.integers(0, 256, size, dtype=np.uint8)
        values = levels.astype(np.float32) / 255
        percents = (2, 5, 50, 95)
        expected = np.percentile(values, percents)
        np.testing.assert_allclose(quality._percentiles(levels, *percents), expected, rtol=1e-12)
        assert quality._percentiles(levels, 50)[0] == pytest.approx(np.median(values), abs=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_the_field_is_its_largest_region_with_its_holes_filled(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bright = ndimage.gaussian_filter(rng.random((120, 160)), 3)
    bright[40:60, 50:90] = 0  # a hole, where the field is
    bright[:, :5] = bright.max()  # a region along the frame's edge
    lo, hi = np.percentile(bright, (2, 95))
    field = quality._field(bright, lo, hi)
    labels, _ = ndimage.label(ndimage.binary_opening(bright > lo + 0.15 * (hi - lo), iterations=2))
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    assert np.array_equal(field, ndimage.binary_fill_holes(labels == largest))


def plain_sharpness(green: np.ndarray, inner: np.ndarray) -> float:
    """The measure on the whole frame, with scipy's Gaussian filter and np.roll for the steps."""
    blurred = [ndimage.gaussian_filter(green, s) for s in quality._SIGMAS]
    fine, coarse = blurred[0] - blurred[1], blurred[1] - blurred[2]
    steps = [fine - np.roll(fine, shift, axis=(0, 1)) for shift in quality._SHIFTS]
    return float(min(np.std(step[inner]) for step in steps) / (np.std(coarse[inner]) + 1e-6))


@pytest.mark.parametrize(("size", "seed"), [((2336, 3504), 0), ((584, 565), 1), ((512, 512), 2)])
def test_the_focus_bands_near_the_field_are_those_of_the_whole_frame(
    size: tuple[int, int], seed: int
) -> None:
    height, width = size
    side = min(size)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = generate_case(
        np.random.default_rng(seed), size=side
    ).image
    img = quality._unit(quality._working_copy(frame, 512))
    bright = img.max(axis=-1)
    field = quality._field(bright, *np.percentile(bright, (2, 95)))
    inner = ndimage.binary_erosion(field, iterations=12)
    assert inner.sum() > 100
    sharpness = quality._sharpness(img[..., 1], inner)
    assert sharpness == pytest.approx(plain_sharpness(img[..., 1], inner), rel=1e-5)
