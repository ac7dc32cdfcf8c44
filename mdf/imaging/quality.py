"""Gradability: whether a photograph shows enough retina, well enough, to be graded.

A model's output on a photograph a human grader would reject is noise, so each image is
assessed before classification: a score in [0, 1], gradable or not, and the reasons.

Method, on a copy downscaled to `working_size` px on the long side (the faults below are
all visible there, and the cost then no longer grows with the camera's resolution):

1. Field of view. A fundus camera images the retina as a bright, roughly round field on a
   black surround. Brightness is the largest of R, G, B (the red-orange retina is bright
   in red even where it is dim in green); the field is the largest connected region above
   a threshold set between the image's dark and bright levels (so it follows exposure),
   its holes filled. The circle is fitted from the field's widest row and tallest column,
   each anchored on its unclipped end when the frame cuts it, so a field pushed out of
   frame, cut flat at top and bottom by the camera's mask, or covered by an eyelid still
   gives the eye's circle. Features: the field's share of the frame (`small_field`), the
   circle centre's offset from the frame centre (`off_centre`), and the share of the field
   outside the circle (a field that is not round).
2. No fundus. Nothing bright in view; a field filling the frame with no dark surround, or
   spilling well outside its circle (a document, a card, a landscape); or a field that is
   not red-orange (warmth, the median of (R - B) / R, is near 0 for grey and white).
3. Occlusion. Inside the inner part of the circle (where every camera images retina), the
   share of pixels far darker than the field's median, overall and in the worst of eight
   sectors: an eyelid, lashes or a small pupil darken one side or the periphery.
4. Exposure. The field's median brightness (`too_dark`); the share of the field whose green
   is clipped and the median green level (`overexposed`): green carries the vessels and
   lesions, and the red channel of a normal photograph is often saturated anyway.
5. Focus. Detail that survives is what a grader reads: the energy of the green channel's
   finest band (the image minus its Gaussian blur at 1 px) over that of the next band
   (1 to 3 px), measured in four directions and the weakest kept, so blur in one direction
   (motion) counts too. The ratio is independent of exposure and contrast.
6. Contrast. The spread of green (5th to 95th percentile) over its mean: haze and a dirty
   lens lift the floor and flatten the picture, exposure alone does not change the ratio.

Each check maps its feature to a margin q in (0, 1), 0.5 exactly at the threshold, higher
when better (a logistic in the log ratio of feature to threshold). The score is the worst
margin: gradable exactly when the score is at least 0.5, i.e. when no check fails.
Reasons come in the order of `QualityReason` (most fundamental first); `no_fundus` alone
when there is no fundus, since the other measures then mean nothing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import fft as sfft
from scipy import ndimage

__all__ = ["Quality", "QualityReason", "QualityThresholds", "assess"]


class QualityReason(enum.StrEnum):
    """Why a photograph cannot be graded, most fundamental first."""

    NO_FUNDUS = "no_fundus"
    SMALL_FIELD = "small_field"
    OFF_CENTRE = "off_centre"
    OCCLUDED = "occluded"
    TOO_DARK = "too_dark"
    OVEREXPOSED = "overexposed"
    OUT_OF_FOCUS = "out_of_focus"
    HAZY = "hazy"
    LOW_CONTRAST = "low_contrast"


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of a gradable photograph; defaults calibrated on the STARE photographs (all
    gradable) and their severe degradations (mdf.synthetic.degradations), see bench/."""

    working_size: int = 512  # long side of the copy measured, px
    min_view: float = 0.06  # 95th-percentile brightness below this: nothing in view
    max_fill: float = 0.97  # field covering more of the frame: no dark surround
    max_outside: float = 0.1  # share of the field outside its fitted circle
    min_warmth: float = 0.25  # median (R - B) / R in the field; grey and white are ~0
    min_field: float = 0.35  # field's share of the frame (STARE: 0.73)
    max_offset: float = 0.2  # circle centre from frame centre, share of the short side
    dark_level: float = 0.4  # "far darker": below this share of the field's median
    max_dark: float = 0.2  # share of the inner field far darker than its median
    max_sector_dark: float = 0.4  # the same in the worst of eight sectors
    min_brightness: float = 0.3  # median brightness (max of R, G, B) in the field
    max_clipped: float = 0.25  # share of the field with green at or above 0.94
    max_green: float = 0.75  # median green in the field
    min_sharpness: float = 0.11  # finest over next band energy, weakest direction
    min_saturation: float = 0.42  # warmth below this: a whitish veil over the retina
    max_floor: float = 0.8  # 2nd percentile over median of green: a veil lifts the floor
    min_contrast: float = 0.33  # (p95 - p5) / mean of green in the field
    steepness: float = 8.0  # how fast a margin leaves 0.5, per unit of log ratio


@dataclass(frozen=True)
class Quality:
    """The assessment: `score` in [0, 1], `gradable` iff no reason; `features` by name."""

    score: float
    gradable: bool
    reasons: tuple[QualityReason, ...]
    features: dict[str, float] = field(default_factory=dict)


def _working_copy(pixels: np.ndarray, size: int) -> np.ndarray:
    """The RGB levels, the long side at most `size` (area-averaged, so noise averages)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {pixels.shape} {pixels.dtype}")
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        small = Image.fromarray(pixels).resize(
            (max(round(w * scale), 1), max(round(h * scale), 1)), Image.Resampling.BOX
        )
        pixels = np.asarray(small)
    return pixels


def _unit(levels: np.ndarray) -> np.ndarray:
    """Levels as float32 in 0..1, the values every measure is taken on."""
    values = levels.astype(np.float32)
    values /= 255  # in place: one array to allocate, not two
    return values


_UNIT = _unit(np.arange(256, dtype=np.uint8))


def _percentiles(levels: np.ndarray, *percents: float) -> list[float]:
    """`np.percentile(_unit(levels), percents)` (linear interpolation) from a count of the
    256 levels: one pass, where a partial sort takes several (a median is the 50th, which
    can differ from np.median's float32 mean of the middle two in the last bits)."""
    cumulative = np.cumsum(np.bincount(levels.ravel(), minlength=256))
    last = int(cumulative[-1]) - 1
    values = []
    for percent in percents:
        rank = last * percent / 100
        below = math.floor(rank)
        lower, upper = _UNIT[np.searchsorted(cumulative, (below, min(below + 1, last)), "right")]
        values.append(float(lower) + (float(upper) - float(lower)) * (rank - below))
    return values


def _cross(mask: np.ndarray, combine: np.ufunc) -> np.ndarray:
    """Each pixel combined with its four neighbours, False beyond the frame: one step of
    scipy.ndimage's binary erosion (`np.logical_and`) or dilation (`np.logical_or`) with its
    default structure, by shifted views, several times faster than ndimage at this size."""
    p = np.pad(mask, 1)
    out = combine(p[1:-1, 1:-1], p[:-2, 1:-1])
    for neighbour in (p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        combine(out, neighbour, out=out)
    return out


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """`ndimage.binary_erosion(mask, iterations=iterations)`."""
    for _ in range(iterations):
        mask = _cross(mask, np.logical_and)
    return mask


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """`ndimage.binary_dilation(mask, iterations=iterations)`."""
    for _ in range(iterations):
        mask = _cross(mask, np.logical_or)
    return mask


def _field(bright: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The largest region above a level between the dark (`lo`) and bright (`hi`) ends,
    opened by two steps, holes filled."""
    level = np.float64(lo + 0.15 * (hi - lo))  # compared in double: not rounded to float32
    mask = _dilate(_erode(bright > level, 2), 2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    region = labels == largest
    # Its holes: the parts of the rest that do not reach the frame's edge (what
    # ndimage.binary_fill_holes finds, by labelling instead of dilating from the edge).
    rest, count = ndimage.label(~region)
    reaches_edge = np.zeros(count + 1, dtype=bool)
    reaches_edge[np.concatenate([rest[0], rest[-1], rest[:, 0], rest[:, -1]])] = True
    reaches_edge[0] = False  # label 0: the region itself
    return ~reaches_edge[rest]


def _circle(mask: np.ndarray) -> tuple[float, float, float]:
    """Centre (x, y) and radius of the eye's circle from the widest row and tallest column.

    Where the frame cuts a chord at one end only, the centre lies a radius from its other
    end; the radius is the longer chord's half, which the frame cuts least.
    """
    h, w = mask.shape
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    row, col = int(np.argmax(rows)), int(np.argmax(cols))
    xs, ys = np.flatnonzero(mask[row]), np.flatnonzero(mask[:, col])
    r = max(rows[row], cols[col]) / 2

    def centre(first: int, last: int, extent: int) -> float:
        if first == 0 and last < extent - 1:
            return last + 1 - r
        if last == extent - 1 and first > 0:
            return first + r
        return (first + last + 1) / 2

    return centre(int(xs[0]), int(xs[-1]), w), centre(int(ys[0]), int(ys[-1]), h), float(r)


_SIGMAS = (0.7, 1.5, 6.0)
_RADIUS = int(4.0 * max(_SIGMAS) + 0.5)  # scipy's kernel radius (truncate 4) of the widest
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _response(sigma: float, n: int) -> np.ndarray:
    """Frequency response, on a circular axis of `n` samples, of the 1-D Gaussian kernel
    that scipy.ndimage.gaussian_filter uses (truncated at 4 sigma): real, as it is even."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / sigma**2 * x**2)
    circular = np.zeros(n)
    circular[x % n] = kernel / kernel.sum()
    return np.fft.fft(circular).real


def _bands(green: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The finest band (Gaussian blur at 0.7 px minus at 1.5 px) and the next (1.5 minus
    6 px), as scipy's `gaussian_filter` (mode "reflect") gives them, from one transform.

    The widest kernel has 49 taps along each axis; in the frequency domain each band costs
    a product and an inverse transform whatever the widths. The image is mirrored by the
    widest radius, so that the transform's wrap-around reaches only the mirrored margin.
    In single precision (the bands agree with scipy's to about 1e-7): half the memory to
    allocate and touch.
    """
    h, w = green.shape
    padded = np.pad(green, _RADIUS, mode="symmetric")
    shape = tuple(sfft.next_fast_len(n, real=True) for n in padded.shape)
    spectrum = sfft.rfft2(padded, shape)
    columns = [_response(s, shape[1])[: shape[1] // 2 + 1].astype(np.float32) for s in _SIGMAS]
    rows = [_response(s, shape[0])[:, None].astype(np.float32) for s in _SIGMAS]
    inside = (slice(_RADIUS, _RADIUS + h), slice(_RADIUS, _RADIUS + w))

    def band(finer: int) -> np.ndarray:
        response = rows[finer] * columns[finer]
        response -= rows[finer + 1] * columns[finer + 1]
        response = spectrum * response
        return sfft.irfft2(response, shape, overwrite_x=True)[inside]

    return band(0), band(1)


def _sharpness(green: np.ndarray, inner: np.ndarray) -> float:
    """Energy of the finest band's steps over the next band's, in the weakest of four
    directions: blur in any one direction (camera shake) lowers it as defocus does.

    ``inner`` keeps off the frame's edge (it is eroded), and the bands are computed on the
    rectangle around it that the widest Gaussian and the steps reach, which gives the same
    values there as the whole frame does, for less work when the field does not fill it.
    """
    rows, cols = np.flatnonzero(inner.any(axis=1)), np.flatnonzero(inner.any(axis=0))
    reach = _RADIUS + 1  # and a step
    top, left = max(int(rows[0]) - reach, 0), max(int(cols[0]) - reach, 0)
    bottom, right = int(rows[-1]) + reach + 1, int(cols[-1]) + reach + 1
    fine, coarse = _bands(green[top:bottom, left:right])
    inner = inner[top:bottom, left:right]
    # Steps from each inner pixel to its neighbour, by shifted views (the neighbour is in
    # the rectangle: `inner` is off its edge), in the order np.nonzero would give.
    h, w = fine.shape
    kept = inner[1:-1, 1:-1]
    here = fine[1:-1, 1:-1][kept]
    spread = [
        np.std(here - fine[1 - dy : h - 1 - dy, 1 - dx : w - 1 - dx][kept]) for dy, dx in _SHIFTS
    ]
    return float(min(spread) / (np.std(coarse[inner]) + 1e-6))


def _exposure(
    bright: np.ndarray, red: np.ndarray, green: np.ndarray, blue: np.ndarray
) -> dict[str, float]:
    """Colour and exposure of the field, from its pixels' levels: the brightest of R, G
    and B, then each channel."""
    median, p2, p5, p95 = _percentiles(green, 50, 2, 5, 95)
    red, green, blue = _unit(red), _unit(green), _unit(blue)
    return {
        "warmth": float(np.median((red - blue) / (red + 1e-3))),
        "brightness": _percentiles(bright, 50)[0],
        "clipped": float((green >= 0.94).mean()),
        "green": median,
        "floor": p2 / (median + 1e-3),
        "contrast": float((p95 - p5) / (green.mean() + 1e-3)),
    }


def _occlusion(dark: np.ndarray, inner: np.ndarray, cx: float, cy: float) -> dict[str, float]:
    """The share of the inner field that is `dark`, overall and in the worst of eight
    sectors around the centre."""
    ys, xs = np.nonzero(inner)
    sector = ((np.arctan2(ys - cy, xs - cx) + math.pi) / (2 * math.pi) * 8).astype(int) % 8
    per_sector = np.bincount(sector[dark[inner]], minlength=8) / np.maximum(
        np.bincount(sector, minlength=8), 1
    )
    return {"dark": float(dark.sum() / max(len(ys), 1)), "sector_dark": float(per_sector.max())}


def _features(levels: np.ndarray, t: QualityThresholds) -> dict[str, float]:
    """Every measure of the method, by name (see the module docstring)."""
    h, w = levels.shape[:2]
    brightest = np.maximum(np.maximum(levels[..., 0], levels[..., 1]), levels[..., 2])
    bright = _unit(brightest)
    lo, view = _percentiles(brightest, 2, 95)
    f: dict[str, float] = {"view": view}
    mask = _field(bright, lo, view)
    area = int(mask.sum())
    f["fill"] = area / (h * w)
    if area < 0.01 * h * w:
        return f
    cx, cy, r = _circle(mask)
    yy, xx = np.ogrid[0:h, 0:w]
    # Squared distances, with no root per pixel: exact, as the centre and radius are
    # multiples of half a pixel.
    dist2 = (xx - cx) ** 2 + (yy - cy) ** 2
    f["outside"] = float((mask & (dist2 > (1.02 * r) ** 2)).sum() / area)
    f["field"] = float((mask & (dist2 <= r**2)).sum() / (h * w))
    f["offset"] = float(math.hypot(cx - w / 2, cy - h / 2) / min(h, w))
    f.update(_exposure(brightest[mask], *(levels[..., c][mask] for c in range(3))))
    inner = dist2 <= (0.85 * r) ** 2
    dark = (bright < t.dark_level * f["brightness"]) & inner
    f.update(_occlusion(dark, inner, cx, cy))
    lit = _erode(mask & inner & ~dark, 4)
    f["sharpness"] = _sharpness(_unit(levels[..., 1]), lit) if lit.sum() > 100 else 0.0
    return f


def _margin(value: float, threshold: float, higher_is_better: bool, steepness: float) -> float:
    """0.5 at the threshold, towards 1 as `value` moves to the good side of it."""
    log_ratio = math.log(max(value, 1e-6) / max(threshold, 1e-6))
    return 1 / (1 + math.exp(-steepness * (log_ratio if higher_is_better else -log_ratio)))


def _checks(f: dict[str, float], t: QualityThresholds) -> list[tuple[QualityReason, float]]:
    """(reason, margin) for every check, in the order of `QualityReason`."""
    s, r = t.steepness, QualityReason
    if "warmth" not in f:  # nothing in view, or no field large enough to measure
        return [(r.NO_FUNDUS, _margin(f["fill"], 0.01, True, s) / 2)]
    fundus = min(
        _margin(f["view"], t.min_view, True, s),
        _margin(f["fill"], t.max_fill, False, s),
        _margin(f["outside"], t.max_outside, False, s),
        # an overexposed field is white whatever it shows: its colour says nothing
        _margin(f["warmth"], t.min_warmth, True, s) if f["green"] <= t.max_green else 1.0,
    )
    return [
        (r.NO_FUNDUS, fundus),
        (r.SMALL_FIELD, _margin(f["field"], t.min_field, True, s)),
        (r.OFF_CENTRE, _margin(f["offset"], t.max_offset, False, s)),
        (
            r.OCCLUDED,
            min(
                _margin(f["dark"], t.max_dark, False, s),
                _margin(f["sector_dark"], t.max_sector_dark, False, s),
            ),
        ),
        (r.TOO_DARK, _margin(f["brightness"], t.min_brightness, True, s)),
        (
            r.OVEREXPOSED,
            min(
                _margin(f["clipped"], t.max_clipped, False, s),
                _margin(f["green"], t.max_green, False, s),
            ),
        ),
        (r.OUT_OF_FOCUS, _margin(f["sharpness"], t.min_sharpness, True, s)),
        (
            r.HAZY,
            min(
                _margin(f["warmth"], t.min_saturation, True, s),
                _margin(f["floor"], t.max_floor, False, s),
            ),
        ),
        (r.LOW_CONTRAST, _margin(f["contrast"], t.min_contrast, True, s)),
    ]


def assess(pixels: np.ndarray, thresholds: QualityThresholds | None = None) -> Quality:
    """Assess one HxWx3 uint8 RGB photograph at its delivered resolution."""
    t = thresholds or QualityThresholds()
    features = _features(_working_copy(pixels, t.working_size), t)
    checks = _checks(features, t)
    failed = tuple(reason for reason, q in checks if q < 0.5)
    if QualityReason.NO_FUNDUS in failed:
        failed = (QualityReason.NO_FUNDUS,)
    score = min(q for _, q in checks)
    return Quality(round(score, 4), not failed, failed, features)
