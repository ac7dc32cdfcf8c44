"""Procedural colour fundus photographs with vessel and lesion masks, labels and clinical text.

Real fundus data with inherited retinal disease is scarce and cannot leave the hospital, so
tests, demos and training smoke runs use these images instead. Each case has the anatomy a
model and the intake code expect (circular field of view, optic disc and cup, macula at the
right offset for the eye, a vessel tree thinning with depth) plus the signs of one disease
(lesions.py) and, optionally, clinical text (clinical_text.py).

Everything is drawn from one numpy Generator, so a seed gives identical bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mdf.synthetic.canvas import Eye, full_size, grid, paint_spot, soft_disc
from mdf.synthetic.clinical_text import clinical_text
from mdf.synthetic.lesions import SIGNS

__all__ = ["DISEASES", "LABEL_OF", "SyntheticCase", "generate_case"]

DISEASES: dict[str, tuple[str, ...]] = {
    "acquired": ("diabetic_retinopathy", "glaucoma", "amd"),
    "inherited": ("retinitis_pigmentosa", "stargardt", "best_disease"),
}
LABEL_OF: dict[str, str] = {d: label for label, ds in DISEASES.items() for d in ds}
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


def _anatomy(rng: np.random.Generator, size: int, laterality: str) -> Eye:
    """Place disc and fovea: fovea near the centre, disc ~2.5 disc diameters nasal, higher."""
    nasal = 1 if laterality == "R" else -1
    c = size / 2
    fovea = (c - nasal * size * rng.uniform(0.04, 0.07), c + size * rng.uniform(0.0, 0.03))
    disc_radius = size * rng.uniform(0.065, 0.075)
    disc = (fovea[0] + nasal * 5 * disc_radius, fovea[1] - size * rng.uniform(0.02, 0.04))
    return Eye(size, (c, c), size * 0.46, disc, disc_radius, fovea, nasal)


def _smooth_1d(rng: np.random.Generator, size: int, knots: int = 6) -> np.ndarray:
    return np.interp(np.arange(size), np.linspace(0, size, knots), rng.normal(0, 1, knots))


def _background(rng: np.random.Generator, eye: Eye) -> np.ndarray:
    """Orange-red fundus with radial illumination falloff and low-frequency mottling."""
    xx, yy = grid(eye.size)
    r2 = ((xx - eye.centre[0]) ** 2 + (yy - eye.centre[1]) ** 2) / eye.fov_radius**2
    u, v = _smooth_1d(rng, eye.size), _smooth_1d(rng, eye.size)
    mottle = (u[:, None] + v[None, :] + u[:, None] * v[None, :]).astype(np.float32)
    light = np.clip(1.0 - 0.45 * r2, 0.0, 1.0) * (1.0 + 0.04 * mottle)
    base = np.array([0.86, 0.4, 0.17], dtype=np.float32) * rng.uniform(0.9, 1.1, 3)
    img = light[..., None] * base.astype(np.float32)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    return img


def _vessels(rng: np.random.Generator, eye: Eye, width_scale: float) -> np.ndarray:
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


def _optic_disc(img: np.ndarray, eye: Eye, cdr: float, pale: bool) -> np.ndarray:
    """Paint disc and cup; return the cup's alpha (the sign of glaucoma)."""
    rim = (1.0, 0.93, 0.78) if pale else (1.0, 0.72, 0.45)
    paint_spot(img, eye, eye.disc, eye.disc_radius, 2.5 * eye.scale, rim, 0.9)
    edge = 1.5 * eye.scale
    return paint_spot(img, eye, eye.disc, cdr * eye.disc_radius, edge, (1.0, 0.96, 0.88), 0.85)


def _macula(img: np.ndarray, eye: Eye) -> None:
    """Darken the macula (broad) and the fovea (narrow)."""
    for sigma, depth in ((0.06, 0.3), (0.015, 0.25)):
        alpha, box = soft_disc(eye, eye.fovea, 2.5 * sigma * eye.size, 0.5)
        x0, y0, x1, y1 = box
        xx, yy = grid(eye.size)
        d2 = (xx[y0:y1, x0:x1] - eye.fovea[0]) ** 2 + (yy[y0:y1, x0:x1] - eye.fovea[1]) ** 2
        shade = 1.0 - depth * np.exp(-d2 / (2 * (sigma * eye.size) ** 2)) * alpha
        img[y0:y1, x0:x1] *= shade[..., None]


def _choose_disease(
    rng: np.random.Generator, label: str | None, disease: str | None
) -> tuple[str, str]:
    """The (label, disease) asked for, checked, or drawn at random where left open."""
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
    text = clinical_text(rng, disease, text_signal) if with_text else None

    eye = _anatomy(rng, size, laterality)
    img = _background(rng, eye)
    _macula(img, eye)
    glaucoma = disease == "glaucoma"
    cdr = rng.uniform(0.7, 0.9) if glaucoma else rng.uniform(0.25, 0.45)
    cup = _optic_disc(img, eye, cdr, pale=disease == "retinitis_pigmentosa")
    lesions = [cup] if glaucoma else SIGNS[disease](rng, img, eye)
    vessels = _vessels(rng, eye, 0.5 if disease == "retinitis_pigmentosa" else 1.0)
    img *= 1.0 - vessels[..., None] * VESSEL_ABSORPTION

    fov = full_size(eye, *soft_disc(eye, eye.centre, eye.fov_radius, 1.0))
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
