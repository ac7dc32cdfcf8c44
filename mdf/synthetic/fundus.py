"""Procedural colour fundus photographs with vessel and lesion masks, labels and clinical text.

Real fundus data with inherited retinal disease is scarce and cannot leave the hospital, so
tests, demos and training smoke runs use these images instead. Each case has the anatomy a
model and the intake code expect (circular field of view, optic disc and cup, macula at the
right offset for the eye, a vessel tree thinning with depth) plus the signs of one disease:

- acquired: diabetic retinopathy (haemorrhages, microaneurysms, hard exudates), glaucoma
  (cup-to-disc ratio 0.7-0.9), AMD (drusen near the macula);
- inherited: retinitis pigmentosa (bone-spicule pigment in the mid-periphery, thin vessels,
  waxy pale disc), Stargardt (pisciform flecks around the macula, macular atrophy),
  Best disease (vitelliform "egg-yolk" lesion at the fovea).

Everything is drawn from one numpy Generator, so a seed gives identical bytes. Shapes are
drawn by Pillow and blended with numpy: about 25 ms for a 512 x 512 case on one CPU core.

`write_dataset` lays out a folder tree as sites deliver it (JPEG and DICOM OP files under
<source>/<date>/<patient>/) with one manifest.csv at the top. Masks are not images to
classify: they go under masks/, which the manifest does not list, and masks.csv maps each
image to its masks.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydicom.uid import generate_uid

from mdf.imaging.dicom_writer import TRANSFER_SYNTAXES, write_dicom_op
from training.splits import Example, Split, split_by_patient

__all__ = [
    "DISEASES",
    "LABEL_OF",
    "MANIFEST_COLUMNS",
    "MASKS_COLUMNS",
    "SyntheticCase",
    "generate_case",
    "read_examples",
    "synthetic_split",
    "write_dataset",
]

DISEASES: dict[str, tuple[str, ...]] = {
    "acquired": ("diabetic_retinopathy", "glaucoma", "amd"),
    "inherited": ("retinitis_pigmentosa", "stargardt", "best_disease"),
}
LABEL_OF: dict[str, str] = {d: label for label, ds in DISEASES.items() for d in ds}
MANIFEST_COLUMNS = (
    "file",
    "patient_id",
    "study_id",
    "laterality",
    "clinical_text",
    "label",
    "source",
)
# masks.csv is a labels file for `mdf labels import`: paths relative to its folder, and
# `mask` lists the segmentation channels' PNGs (vessels, lesions) separated by ";".
MASKS_COLUMNS = ("image", "label", "mask", "source")
JPEG_QUALITY = 95

Point = tuple[float, float]  # (x, y) in pixels
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive
Colour = tuple[float, float, float]  # RGB, 0..1

# Colours of what is painted over the orange-red background.
HAEMORRHAGE = (0.42, 0.04, 0.03)
MICROANEURYSM = (0.5, 0.03, 0.04)
EXUDATE = (1.0, 0.9, 0.4)
DRUSEN = (0.95, 0.84, 0.45)
PIGMENT = (0.1, 0.06, 0.05)
FLECK = (1.0, 0.92, 0.55)
ATROPHY = (0.55, 0.36, 0.26)
VITELLIFORM = (1.0, 0.72, 0.18)
# Per-channel darkening at full vessel opacity: blood absorbs green and blue most.
VESSEL_ABSORPTION = np.array([0.35, 0.62, 0.6], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticCase:
    """One generated photograph: RGB uint8 image, boolean masks and its metadata.

    `vessel_mask` marks every drawn vessel pixel; `lesion_mask` marks the disease's signs
    (for glaucoma the enlarged cup, for retinitis pigmentosa the pigment, not the thin
    vessels or the pale disc).
    """

    image: np.ndarray
    vessel_mask: np.ndarray
    lesion_mask: np.ndarray
    label: str
    disease: str
    laterality: str
    patient_id: str
    study_id: str
    clinical_text: str | None
    source: str


@dataclass(frozen=True)
class _Eye:
    """Where things are: pixel coordinates (x, y) and radii for one image."""

    size: int
    centre: Point
    fov_radius: float
    disc: Point
    disc_radius: float
    fovea: Point
    nasal: int  # +1 when the disc (nasal side) is on the viewer's right, as in a right eye

    @property
    def scale(self) -> float:
        """Pixel sizes below are for a 512-pixel image; this rescales them."""
        return self.size / 512


def _anatomy(rng: np.random.Generator, size: int, laterality: str) -> _Eye:
    """Place disc and fovea: fovea near the centre, disc ~2.5 disc diameters nasal, higher."""
    nasal = 1 if laterality == "R" else -1
    c = size / 2
    fovea = (c - nasal * size * rng.uniform(0.04, 0.07), c + size * rng.uniform(0.0, 0.03))
    disc_radius = size * rng.uniform(0.065, 0.075)
    disc = (fovea[0] + nasal * 5 * disc_radius, fovea[1] - size * rng.uniform(0.02, 0.04))
    return _Eye(size, (c, c), size * 0.46, disc, disc_radius, fovea, nasal)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return xx, yy


def _smooth_1d(rng: np.random.Generator, size: int, knots: int = 6) -> np.ndarray:
    return np.interp(np.arange(size), np.linspace(0, size, knots), rng.normal(0, 1, knots))


def _background(rng: np.random.Generator, eye: _Eye) -> np.ndarray:
    """Orange-red fundus with radial illumination falloff and low-frequency mottling."""
    xx, yy = _grid(eye.size)
    r2 = ((xx - eye.centre[0]) ** 2 + (yy - eye.centre[1]) ** 2) / eye.fov_radius**2
    u, v = _smooth_1d(rng, eye.size), _smooth_1d(rng, eye.size)
    mottle = (u[:, None] + v[None, :] + u[:, None] * v[None, :]).astype(np.float32)
    light = np.clip(1.0 - 0.45 * r2, 0.0, 1.0) * (1.0 + 0.04 * mottle)
    base = np.array([0.86, 0.4, 0.17], dtype=np.float32) * rng.uniform(0.9, 1.1, 3)
    img = light[..., None] * base.astype(np.float32)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    return img


def _blend(img: np.ndarray, alpha: np.ndarray, colour: Colour, box: Box) -> None:
    """Alpha-blend `colour` into `img` inside `box` (x0, y0, x1, y1), in place."""
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1]
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * np.asarray(colour, dtype=np.float32)


def _soft_disc(eye: _Eye, centre: Point, radius: float, edge: float) -> tuple[np.ndarray, Box]:
    """Alpha (1 inside, smooth edge) of a round spot, and its bounding box."""
    xx, yy = _grid(eye.size)
    reach = radius + 2 * edge
    x0, y0 = max(int(centre[0] - reach), 0), max(int(centre[1] - reach), 0)
    x1, y1 = min(int(centre[0] + reach) + 1, eye.size), min(int(centre[1] + reach) + 1, eye.size)
    d = np.hypot(xx[y0:y1, x0:x1] - centre[0], yy[y0:y1, x0:x1] - centre[1])
    alpha = np.clip((radius + edge - d) / (2 * edge), 0.0, 1.0)
    return alpha, (x0, y0, x1, y1)


def _full_size(eye: _Eye, alpha: np.ndarray, box: Box) -> np.ndarray:
    full = np.zeros((eye.size, eye.size), dtype=np.float32)
    full[box[1] : box[3], box[0] : box[2]] = alpha
    return full


def _paint_spot(
    img: np.ndarray,
    eye: _Eye,
    centre: Point,
    radius: float,
    edge: float,
    colour: Colour,
    opacity: float,
) -> np.ndarray:
    """Blend a round spot; return its full-size alpha (for masks)."""
    alpha, box = _soft_disc(eye, centre, radius, edge)
    _blend(img, alpha * opacity, colour, box)
    return _full_size(eye, alpha, box)


class _Layer:
    """A Pillow canvas of one lesion kind, blended into the image in one go."""

    def __init__(self, size: int) -> None:
        self.canvas = Image.new("L", (size, size))
        self.draw = ImageDraw.Draw(self.canvas)

    def dots(self, xs: np.ndarray, ys: np.ndarray, radii: np.ndarray) -> None:
        for x, y, r in zip(xs, ys, radii, strict=True):
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=255)

    def blend(self, img: np.ndarray, colour: Colour, opacity: float, blur: float) -> np.ndarray:
        """Blend into `img`; return the full-size alpha (0..1) for the lesion mask."""
        canvas = self.canvas.filter(ImageFilter.GaussianBlur(blur)) if blur else self.canvas
        alpha = np.asarray(canvas, dtype=np.float32) / 255.0
        box = canvas.getbbox()
        if box is not None:
            x0, y0, x1, y1 = box
            _blend(img, alpha[y0:y1, x0:x1] * opacity, colour, box)
        return alpha


def _scatter(
    rng: np.random.Generator, n: int, centre: Point, r_min: float, r_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniformly over the annulus r_min..r_max around `centre`."""
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, n))
    t = rng.uniform(0, 2 * math.pi, n)
    return centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)


def _vessels(rng: np.random.Generator, eye: _Eye, width_scale: float) -> np.ndarray:
    """Grow arteries and veins from the disc; return the vessel opacity map (0..1).

    Four arcades leave the disc up and down and bend towards the macula; smaller nasal
    vessels run straight. Each step turns towards the branch's target direction, thins a
    little, and sometimes forks into a thinner child.
    """
    canvas = Image.new("L", (eye.size, eye.size))
    draw = ImageDraw.Draw(canvas)
    s = eye.scale
    step = 9 * s
    # Angles are atan2(dy, dx) with y pointing down; `up` is -1 for superior, +1 inferior.
    temporal = math.pi if eye.nasal == 1 else 0.0
    trunks = []
    for up in (-1, 1):
        leave = up * math.pi / 2 + 0.35 * up * eye.nasal  # mostly vertical, tilted temporally
        arc_end = temporal - 0.5 * up * eye.nasal  # temporal, slightly away from the macula
        for vein, w in ((False, 5.0), (True, 7.0)):
            trunks.append((leave + rng.normal(0, 0.12), arc_end, 0.07, w * s, vein, 55))
        nasal_dir = (0.0 if eye.nasal == 1 else math.pi) + up * rng.uniform(0.4, 0.9)
        trunks.append((nasal_dir, nasal_dir, 0.02, 3.5 * s, bool(rng.integers(2)), 30))

    stack = []
    for theta, target, steer, width, vein, steps in trunks:
        x = eye.disc[0] + rng.normal(0, 0.2) * eye.disc_radius
        y = eye.disc[1] + rng.normal(0, 0.2) * eye.disc_radius
        stack.append((x, y, theta, target, steer, width * width_scale, vein, steps))
    while stack:
        x, y, theta, target, steer, width, vein, steps = stack.pop()
        shade = 255 if vein else 170
        for _ in range(steps):
            diff = math.atan2(math.sin(target - theta), math.cos(target - theta))
            theta += steer * diff + rng.normal(0, 0.1)
            nx, ny = x + step * math.cos(theta), y + step * math.sin(theta)
            w = max(round(width), 1)
            draw.line((x, y, nx, ny), fill=shade, width=w)
            if w >= 3:
                draw.ellipse((nx - w / 2, ny - w / 2, nx + w / 2, ny + w / 2), fill=shade)
            x, y = nx, ny
            width *= 0.985
            if math.hypot(x - eye.centre[0], y - eye.centre[1]) > eye.fov_radius or width < 0.7:
                break
            if width > 1.4 and rng.random() < 0.1:
                fork = theta + rng.choice((-1, 1)) * rng.uniform(0.5, 1.0)
                stack.append((x, y, fork, fork, 0.01, width * 0.65, vein, int(steps * 0.6)))
                width *= 0.85
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _optic_disc(img: np.ndarray, eye: _Eye, cdr: float, pale: bool) -> np.ndarray:
    """Paint disc and cup; return the cup's alpha (the sign of glaucoma)."""
    rim = (1.0, 0.93, 0.78) if pale else (1.0, 0.72, 0.45)
    _paint_spot(img, eye, eye.disc, eye.disc_radius, 2.5 * eye.scale, rim, 0.9)
    edge = 1.5 * eye.scale
    return _paint_spot(img, eye, eye.disc, cdr * eye.disc_radius, edge, (1.0, 0.96, 0.88), 0.85)


def _macula(img: np.ndarray, eye: _Eye) -> None:
    """Darken the macula (broad) and the fovea (narrow)."""
    for sigma, depth in ((0.06, 0.3), (0.015, 0.25)):
        alpha, box = _soft_disc(eye, eye.fovea, 2.5 * sigma * eye.size, 0.5)
        x0, y0, x1, y1 = box
        xx, yy = _grid(eye.size)
        d2 = (xx[y0:y1, x0:x1] - eye.fovea[0]) ** 2 + (yy[y0:y1, x0:x1] - eye.fovea[1]) ** 2
        shade = 1.0 - depth * np.exp(-d2 / (2 * (sigma * eye.size) ** 2)) * alpha
        img[y0:y1, x0:x1] *= shade[..., None]


def _diabetic_retinopathy(rng: np.random.Generator, img: np.ndarray, eye: _Eye) -> list[np.ndarray]:
    s = eye.scale
    pole = ((eye.fovea[0] + eye.disc[0]) / 2, eye.fovea[1])
    alphas = []
    for n, (r_lo, r_hi), colour in (
        (rng.integers(8, 25), (2.0, 6.0), HAEMORRHAGE),
        (rng.integers(10, 35), (1.0, 1.8), MICROANEURYSM),
    ):
        layer = _Layer(eye.size)
        xs, ys = _scatter(rng, n, pole, 0, 0.6 * eye.fov_radius)
        layer.dots(xs, ys, rng.uniform(r_lo, r_hi, n) * s)
        alphas.append(layer.blend(img, colour, 0.9, 0.8 * s))
    exudates = _Layer(eye.size)
    for cx, cy in zip(
        *_scatter(rng, rng.integers(2, 5), eye.fovea, 0.05 * eye.size, 0.2 * eye.size), strict=True
    ):
        n = rng.integers(5, 16)
        xs, ys = _scatter(rng, n, (cx, cy), 0, 0.03 * eye.size)
        exudates.dots(xs, ys, rng.uniform(1.0, 2.5, n) * s)
    alphas.append(exudates.blend(img, EXUDATE, 0.85, 0.6 * s))
    return alphas


def _amd(rng: np.random.Generator, img: np.ndarray, eye: _Eye) -> list[np.ndarray]:
    n = rng.integers(15, 50)
    layer = _Layer(eye.size)
    xs, ys = _scatter(rng, n, eye.fovea, 0, 0.13 * eye.size)
    layer.dots(xs, ys, rng.uniform(1.5, 4.5, n) * eye.scale)
    return [layer.blend(img, DRUSEN, 0.75, 1.2 * eye.scale)]


def _retinitis_pigmentosa(rng: np.random.Generator, img: np.ndarray, eye: _Eye) -> list[np.ndarray]:
    """Bone spicules: small dark stars scattered over the mid-periphery."""
    s = eye.scale
    layer = _Layer(eye.size)
    n = rng.integers(70, 150)
    xs, ys = _scatter(rng, n, eye.centre, 0.5 * eye.fov_radius, 0.9 * eye.fov_radius)
    for x, y in zip(xs, ys, strict=True):
        for t in rng.uniform(0, 2 * math.pi, rng.integers(3, 6)):
            length = rng.uniform(3, 8) * s
            end = (x + length * math.cos(t), y + length * math.sin(t))
            layer.draw.line((x, y, *end), fill=255, width=max(round(1.6 * s), 1))
    return [layer.blend(img, PIGMENT, 0.9, 0.4 * s)]


def _stargardt(rng: np.random.Generator, img: np.ndarray, eye: _Eye) -> list[np.ndarray]:
    """Pisciform flecks (short forked streaks) around an atrophic macula."""
    s = eye.scale
    atrophy = _paint_spot(
        img, eye, eye.fovea, rng.uniform(0.03, 0.05) * eye.size, 3 * s, ATROPHY, 0.6
    )
    layer = _Layer(eye.size)
    n = rng.integers(25, 60)
    xs, ys = _scatter(rng, n, eye.fovea, 0.07 * eye.size, 0.22 * eye.size)
    for x, y, t in zip(xs, ys, rng.uniform(0, 2 * math.pi, n), strict=True):
        length = rng.uniform(4, 9) * s
        tail = (x + length * math.cos(t), y + length * math.sin(t))
        layer.draw.line((x, y, *tail), fill=255, width=max(round(2.5 * s), 1))
        for fin in (-0.6, 0.6):
            end = (
                tail[0] + 0.5 * length * math.cos(t + fin),
                tail[1] + 0.5 * length * math.sin(t + fin),
            )
            layer.draw.line((*tail, *end), fill=255, width=max(round(1.5 * s), 1))
    return [atrophy, layer.blend(img, FLECK, 0.8, 0.7 * s)]


def _best_disease(rng: np.random.Generator, img: np.ndarray, eye: _Eye) -> list[np.ndarray]:
    radius = rng.uniform(0.04, 0.065) * eye.size
    return [_paint_spot(img, eye, eye.fovea, radius, 0.006 * eye.size, VITELLIFORM, 0.92)]


_SIGNS: dict[str, Callable[[np.random.Generator, np.ndarray, _Eye], list[np.ndarray]]] = {
    "diabetic_retinopathy": _diabetic_retinopathy,
    "amd": _amd,
    "retinitis_pigmentosa": _retinitis_pigmentosa,
    "stargardt": _stargardt,
    "best_disease": _best_disease,
}


@dataclass(frozen=True)
class _Profile:
    """Who tends to present with a disease, for the clinical text."""

    ages: tuple[int, int]
    histories: tuple[str, ...]
    family_history_rate: float


_PROFILES = {
    "diabetic_retinopathy": _Profile(
        (40, 80),
        (
            "Type 2 diabetes for {years} years, poorly controlled; gradual blurring of vision.",
            "Type 1 diabetes since age 12; referred from diabetic eye screening.",
        ),
        0.15,
    ),
    "glaucoma": _Profile(
        (50, 85),
        (
            "Raised intraocular pressure ({iop} mmHg) at the optician; no symptoms.",
            "Gradual loss of peripheral vision noticed over {years} years.",
        ),
        0.25,
    ),
    "amd": _Profile(
        (60, 90),
        (
            "Distorted central vision when reading; smoker for {years} years.",
            "Slowly worsening central vision in both eyes.",
        ),
        0.2,
    ),
    "retinitis_pigmentosa": _Profile(
        (12, 45),
        (
            "Night blindness since childhood and a narrowing field of vision.",
            "Difficulty seeing in dim light for {years} years; bumps into objects.",
        ),
        0.7,
    ),
    "stargardt": _Profile(
        (8, 30),
        (
            "Progressive loss of central vision since adolescence; poor reading vision.",
            "Central vision declining for {years} years; struggles to recognise faces.",
        ),
        0.6,
    ),
    "best_disease": _Profile(
        (5, 40),
        (
            "Mildly blurred central vision found at a school eye test.",
            "Slowly blurring central vision for {years} years.",
        ),
        0.75,
    ),
}
# Text that says nothing about the disease: what `text_signal` < 1 mixes in.
_NEUTRAL = _Profile((20, 85), ("Referred from routine screening; no visual complaints.",), 0.1)
_FAMILY = {
    True: (
        "Family history: a sibling has the same eye condition.",
        "Family history: mother and maternal uncle affected.",
        "Family history: father has a similar retinal disease.",
    ),
    False: (
        "No family history of eye disease.",
        "Family history unremarkable.",
    ),
}


def _clinical_text(rng: np.random.Generator, disease: str, text_signal: float) -> str:
    """Age, sex, history and family history; disease-typical with probability `text_signal`."""
    profile = _PROFILES[disease] if rng.random() < text_signal else _NEUTRAL
    age = rng.integers(profile.ages[0], profile.ages[1] + 1)
    sex = ("man", "woman")[rng.integers(2)] if age >= 18 else ("boy", "girl")[rng.integers(2)]
    history = profile.histories[rng.integers(len(profile.histories))].format(
        years=rng.integers(2, 15), iop=rng.integers(24, 36)
    )
    family = _FAMILY[bool(rng.random() < profile.family_history_rate)]
    return f"{age}-year-old {sex}. {history} {family[rng.integers(len(family))]}"


def _choose_disease(rng: np.random.Generator, label: str | None, disease: str | None):
    if disease is not None:
        if disease not in LABEL_OF:
            raise ValueError(f"unknown disease {disease!r}; valid: {sorted(LABEL_OF)}")
        if label is not None and LABEL_OF[disease] != label:
            raise ValueError(f"disease {disease!r} is {LABEL_OF[disease]}, not {label}")
        return LABEL_OF[disease], disease
    if label is None:
        label = sorted(DISEASES)[rng.integers(len(DISEASES))]
    if label not in DISEASES:
        raise ValueError(f"unknown label {label!r}; valid: {sorted(DISEASES)}")
    return label, DISEASES[label][rng.integers(len(DISEASES[label]))]


def generate_case(
    rng_or_seed: int | np.random.Generator,
    *,
    label: str | None = None,
    disease: str | None = None,
    size: int = 512,
    with_text: bool = True,
    laterality: str | None = None,
    text_signal: float = 1.0,
) -> SyntheticCase:
    """Generate one case; unspecified label, disease and laterality are drawn at random.

    `text_signal` is the probability that the clinical text is typical of the disease (age,
    history, family history) rather than neutral: lower it to make text less telling.
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if laterality not in (None, "L", "R"):
        raise ValueError(f"laterality must be 'L', 'R' or None, got {laterality!r}")
    rng = np.random.default_rng(rng_or_seed)
    label, disease = _choose_disease(rng, label, disease)
    laterality = laterality or ("L", "R")[rng.integers(2)]
    patient_id = f"SYN{rng.integers(10**8):08d}"
    study_id = f"ST{rng.integers(10**8):08d}"
    text = _clinical_text(rng, disease, text_signal) if with_text else None

    eye = _anatomy(rng, size, laterality)
    img = _background(rng, eye)
    _macula(img, eye)
    glaucoma = disease == "glaucoma"
    cdr = rng.uniform(0.7, 0.9) if glaucoma else rng.uniform(0.25, 0.45)
    cup = _optic_disc(img, eye, cdr, pale=disease == "retinitis_pigmentosa")
    lesions = [cup] if glaucoma else _SIGNS[disease](rng, img, eye)
    vessels = _vessels(rng, eye, 0.5 if disease == "retinitis_pigmentosa" else 1.0)
    img *= 1.0 - vessels[..., None] * VESSEL_ABSORPTION

    fov = _full_size(eye, *_soft_disc(eye, eye.centre, eye.fov_radius, 1.0))
    img *= fov[..., None]
    inside = fov > 0.5
    return SyntheticCase(
        image=(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8),
        vessel_mask=(vessels > 0) & inside,
        lesion_mask=(np.maximum.reduce(lesions) > 0.5) & inside,
        label=label,
        disease=disease,
        laterality=laterality,
        patient_id=patient_id,
        study_id=study_id,
        clinical_text=text,
        source="synthetic",
    )


def _uid(*parts: object) -> str:
    """A UID derived from `parts`, so rewriting a dataset gives the same UIDs."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dataset(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 512,
    dicom_fraction: float = 0.5,
    transfer_syntaxes: Sequence[str] = ("explicit", "jpeg-baseline"),
    with_text: bool | float = True,
    sources: Sequence[str] = ("synthetic",),
    write_masks: bool = True,
    masks_dir: str | Path | None = None,
    images_per_patient: int = 2,
    confound: float = 0.0,
    text_signal: float = 1.0,
) -> Path:
    """Write `n` images as a site would deliver them, plus manifest.csv; return `out_dir`.

    Patients alternate between acquired and inherited (balanced labels); each patient has
    `images_per_patient` images, right and left eye in turn, a new study every two images.
    Images go to <source>/<date>/<patient_id>/ as JPEG (quality 95) or, with probability
    `dicom_fraction`, DICOM OP in one of `transfer_syntaxes` (half of them named IMnnnn
    without extension, as many PACS exports are). manifest.csv lists every image with
    MANIFEST_COLUMNS, paths relative to `out_dir`.

    `with_text` is whether (or, as a float, how often) a patient has clinical text.
    `confound` is the fraction of patients whose source and text presence follow their
    label, as in public data where only the inherited-disease atlas has text: acquired
    cases then come from `sources[0]` without text, inherited from `sources[-1]` with text.

    With `write_masks`, vessel and lesion masks are written as PNG under `masks_dir`
    (default: a sibling folder `<out_dir>-masks`, so an inbox holds only what a site
    delivers), mirroring the image paths, suffixed _vessel.png and _lesion.png, and listed
    in `masks_dir`/masks.csv, a labels file for `mdf labels import` (MASKS_COLUMNS).
    Same arguments give identical files.
    """
    if n < 0 or images_per_patient < 1:
        raise ValueError("n must be >= 0 and images_per_patient >= 1")
    if not sources:
        raise ValueError("sources must name at least one source")
    for name, value in (
        ("dicom_fraction", dicom_fraction),
        ("with_text", float(with_text)),
        ("confound", confound),
        ("text_signal", text_signal),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    unknown = set(transfer_syntaxes) - set(TRANSFER_SYNTAXES)
    if unknown or not transfer_syntaxes:
        raise ValueError(f"transfer_syntaxes must be from {sorted(TRANSFER_SYNTAXES)}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask_root = Path(masks_dir) if masks_dir is not None else out.with_name(f"{out.name}-masks")
    rng = np.random.default_rng(seed)
    labels = sorted(DISEASES)
    manifest: list[tuple[str, ...]] = []
    masks: list[tuple[str, ...]] = []
    for p in range(math.ceil(n / images_per_patient)):
        label = labels[p % len(labels)]
        if rng.random() < confound:
            source = sources[-1] if label == "inherited" else sources[0]
            has_text = label == "inherited"
        else:
            source = sources[rng.integers(len(sources))]
            has_text = bool(rng.random() < float(with_text))
        first_visit = date(2023, 1, 2) + timedelta(days=int(rng.integers(0, 700)))
        patient_rng = np.random.default_rng(rng.integers(2**63))
        first: SyntheticCase | None = None
        for k in range(min(images_per_patient, n - p * images_per_patient)):
            case = generate_case(
                patient_rng,
                label=label,
                disease=first.disease if first else None,
                size=size,
                with_text=has_text and first is None,
                laterality="RL"[k % 2],
                text_signal=text_signal,
            )
            first = first or case
            patient_id = f"S{seed}P{p + 1:06d}"
            case = replace(
                case,
                patient_id=patient_id,
                study_id=f"{patient_id}-{k // 2 + 1}",
                clinical_text=first.clinical_text,
                source=source,
            )
            when = datetime.combine(first_visit, datetime.min.time()) + timedelta(
                days=91 * (k // 2), minutes=int(rng.integers(8 * 60, 17 * 60))
            )
            folder = out / source / when.date().isoformat() / patient_id
            if rng.random() < dicom_fraction:
                syntax = transfer_syntaxes[rng.integers(len(transfer_syntaxes))]
                name = f"IM{k + 1:04d}" if rng.random() < 0.5 else f"{case.laterality}_{k + 1}.dcm"
                path = _write_dicom(folder / name, case, syntax, when, seed)
            else:
                path = folder / f"{case.laterality}_{k + 1}.jpg"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(case.image).save(path, quality=JPEG_QUALITY)
            rel = path.relative_to(out).as_posix()
            text = case.clinical_text or ""
            manifest.append(
                (rel, patient_id, case.study_id, case.laterality, text, case.label, source)
            )
            if write_masks:
                image = Path(os.path.relpath(path, mask_root)).as_posix()
                channels = ";".join(_write_masks(mask_root, rel, case))
                masks.append((image, case.label, channels, source))

    _write_csv(out / "manifest.csv", MANIFEST_COLUMNS, manifest)
    if write_masks:
        _write_csv(mask_root / "masks.csv", MASKS_COLUMNS, masks)
    return out


def _write_dicom(path: Path, case: SyntheticCase, syntax: str, when: datetime, seed: int) -> Path:
    """Write `case` as DICOM OP with UIDs derived from the seed and ids (reproducible)."""
    study = (seed, case.patient_id, case.study_id)
    return write_dicom_op(
        path,
        case.image,
        transfer_syntax=syntax,
        patient_id=case.patient_id,
        patient_name=f"SYNTHETIC^{case.patient_id}",
        study_uid=_uid(*study),
        series_uid=_uid(*study, case.laterality),
        sop_uid=_uid(*study, path.name),
        laterality=case.laterality,
        clinical_text=case.clinical_text,
        extension=False,
        acquired=when,
    )


def _write_masks(root: Path, rel: str, case: SyntheticCase) -> tuple[str, str]:
    """Save the masks under `root` mirroring the image path; return their relative paths."""
    stem = Path(rel).with_suffix("")
    paths = []
    for kind, mask in (("vessel", case.vessel_mask), ("lesion", case.lesion_mask)):
        path = stem.with_name(f"{stem.name}_{kind}.png")
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / path)
        paths.append(path.as_posix())
    return paths[0], paths[1]


def _write_csv(path: Path, header: Sequence[str], rows: list[tuple[str, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_examples(out_dir: str | Path, masks_dir: str | Path | None = None) -> list[Example]:
    """The labelled examples of a folder written by `write_dataset`, without a database.

    For training runs and benchmarks that skip intake: ids are row numbers of manifest.csv,
    masks come from masks.csv when there is one.
    """
    out = Path(out_dir)
    mask_root = Path(masks_dir) if masks_dir is not None else out.with_name(f"{out.name}-masks")
    masks: dict[Path, str] = {}
    if (mask_root / "masks.csv").is_file():
        with (mask_root / "masks.csv").open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                paths = (str(mask_root / p) for p in row["mask"].split(";"))
                masks[(mask_root / row["image"]).resolve()] = ";".join(paths)
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        Example(
            image_id=i,
            path=str(out / row["file"]),
            frame=0,
            label=row["label"],
            patient=row["patient_id"],
            source=row["source"],
            clinical_text=row["clinical_text"] or None,
            mask_path=masks.get((out / row["file"]).resolve()),
        )
        for i, row in enumerate(rows)
    ]


def synthetic_split(
    directory: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 256,
    with_text: bool = True,
    eval_fraction: float = 0.25,
) -> Split:
    """Write `n` labelled images (JPEG and DICOM, with masks) and split them by patient."""
    out = write_dataset(Path(directory) / "images", n, seed=seed, size=size, with_text=with_text)
    return split_by_patient(read_examples(out), eval_fraction=eval_fraction, seed=seed)
