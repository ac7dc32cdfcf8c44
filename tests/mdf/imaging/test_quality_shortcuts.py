"""The gradability measures' cheaper computations give exactly what the plain ones give: the
field's holes filled by labelling, and the focus bands on the rectangle around the field."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mdf.imaging.quality import _SIGMAS, _field, _sharpness, _working_copy
from mdf.synthetic.fundus import generate_case


def plain_sharpness(green: np.ndarray, inner: np.ndarray) -> float:
    """The measure on the whole frame, with np.roll for the steps."""
    blurred = [ndimage.gaussian_filter(green, s) for s in _SIGMAS]
    fine, coarse = blurred[0] - blurred[1], blurred[1] - blurred[2]
    shifts = ((0, 1), (1, 0), (1, 1), (1, -1))
    steps = [fine - np.roll(fine, shift, axis=(0, 1)) for shift in shifts]
    return float(min(np.std(step[inner]) for step in steps) / (np.std(coarse[inner]) + 1e-6))


@pytest.mark.parametrize("seed", range(4))
def test_the_field_is_its_largest_region_with_its_holes_filled(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bright = ndimage.gaussian_filter(rng.random((120, 160)), 3)
    bright[40:60, 50:90] = 0  # a hole, where the field is
    bright[:, :5] = bright.max()  # a region along the frame's edge
    field = _field(bright)
    lo, hi = np.percentile(bright, (2, 95))
    labels, _ = ndimage.label(ndimage.binary_opening(bright > lo + 0.15 * (hi - lo), iterations=2))
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    assert np.array_equal(field, ndimage.binary_fill_holes(labels == largest))


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
    img = _working_copy(frame, 512)
    inner = ndimage.binary_erosion(_field(img.max(axis=-1)), iterations=12)
    assert inner.sum() > 100
    assert _sharpness(img[..., 1], inner) == plain_sharpness(img[..., 1], inner)
