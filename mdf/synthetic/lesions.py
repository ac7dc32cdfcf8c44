"""The signs of each disease, painted over a normal fundus.

- acquired: diabetic retinopathy (haemorrhages, microaneurysms, hard exudates), AMD (drusen
  near the macula);
- inherited: retinitis pigmentosa (bone-spicule pigment in the mid-periphery), Stargardt
  (pisciform flecks around the macula, macular atrophy), Best disease (vitelliform
  "egg-yolk" lesion at the fovea).

Signs that change the anatomy itself (glaucoma's enlarged cup, retinitis pigmentosa's thin
vessels and pale disc) are painted with it, in fundus.py. Each painter returns the alphas of
what it painted: the lesion mask is made from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mdf.synthetic.canvas import Eye, Layer, paint_spot, scatter

__all__ = ["SIGNS"]

# Colours of what is painted over the orange-red background.
HAEMORRHAGE = (0.42, 0.04, 0.03)
MICROANEURYSM = (0.5, 0.03, 0.04)
EXUDATE = (1.0, 0.9, 0.4)
DRUSEN = (0.95, 0.84, 0.45)
PIGMENT = (0.1, 0.06, 0.05)
FLECK = (1.0, 0.92, 0.55)
ATROPHY = (0.55, 0.36, 0.26)
VITELLIFORM = (1.0, 0.72, 0.18)


def _diabetic_retinopathy(rng: np.random.Generator, img: np.ndarray, eye: Eye) -> list[np.ndarray]:
    s = eye.scale
    pole = ((eye.fovea[0] + eye.disc[0]) / 2, eye.fovea[1])
    alphas = []
    for n, (r_lo, r_hi), colour in (
        (rng.integers(8, 25), (2.0, 6.0), HAEMORRHAGE),
        (rng.integers(10, 35), (1.0, 1.8), MICROANEURYSM),
    ):
        layer = Layer(eye.size)
        xs, ys = scatter(rng, n, pole, 0, 0.6 * eye.fov_radius)
        layer.dots(xs, ys, rng.uniform(r_lo, r_hi, n) * s)
        alphas.append(layer.blend(img, colour, 0.9, 0.8 * s))
    exudates = Layer(eye.size)
    for cx, cy in zip(
        *scatter(rng, rng.integers(2, 5), eye.fovea, 0.05 * eye.size, 0.2 * eye.size), strict=True
    ):
        n = rng.integers(5, 16)
        xs, ys = scatter(rng, n, (cx, cy), 0, 0.03 * eye.size)
        exudates.dots(xs, ys, rng.uniform(1.0, 2.5, n) * s)
    alphas.append(exudates.blend(img, EXUDATE, 0.85, 0.6 * s))
    return alphas


def _amd(rng: np.random.Generator, img: np.ndarray, eye: Eye) -> list[np.ndarray]:
    n = rng.integers(15, 50)
    layer = Layer(eye.size)
    xs, ys = scatter(rng, n, eye.fovea, 0, 0.13 * eye.size)
    layer.dots(xs, ys, rng.uniform(1.5, 4.5, n) * eye.scale)
    return [layer.blend(img, DRUSEN, 0.75, 1.2 * eye.scale)]


def _retinitis_pigmentosa(rng: np.random.Generator, img: np.ndarray, eye: Eye) -> list[np.ndarray]:
    """Bone spicules: small dark stars scattered over the mid-periphery."""
    s = eye.scale
    layer = Layer(eye.size)
    n = rng.integers(70, 150)
    xs, ys = scatter(rng, n, eye.centre, 0.5 * eye.fov_radius, 0.9 * eye.fov_radius)
    for x, y in zip(xs, ys, strict=True):
        for t in rng.uniform(0, 2 * math.pi, rng.integers(3, 6)):
            length = rng.uniform(3, 8) * s
            end = (x + length * math.cos(t), y + length * math.sin(t))
            layer.draw.line((x, y, *end), fill=255, width=max(round(1.6 * s), 1))
    return [layer.blend(img, PIGMENT, 0.9, 0.4 * s)]


def _stargardt(rng: np.random.Generator, img: np.ndarray, eye: Eye) -> list[np.ndarray]:
    """Pisciform flecks (short forked streaks) around an atrophic macula."""
    s = eye.scale
    atrophy = paint_spot(
        img, eye, eye.fovea, rng.uniform(0.03, 0.05) * eye.size, 3 * s, ATROPHY, 0.6
    )
    layer = Layer(eye.size)
    n = rng.integers(25, 60)
    xs, ys = scatter(rng, n, eye.fovea, 0.07 * eye.size, 0.22 * eye.size)
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


def _best_disease(rng: np.random.Generator, img: np.ndarray, eye: Eye) -> list[np.ndarray]:
    radius = rng.uniform(0.04, 0.065) * eye.size
    return [paint_spot(img, eye, eye.fovea, radius, 0.006 * eye.size, VITELLIFORM, 0.92)]


# Glaucoma has no entry: its sign, the enlarged cup, is painted with the optic disc.
SIGNS: dict[str, Callable[[np.random.Generator, np.ndarray, Eye], list[np.ndarray]]] = {
    "diabetic_retinopathy": _diabetic_retinopathy,
    "amd": _amd,
    "retinitis_pigmentosa": _retinitis_pigmentosa,
    "stargardt": _stargardt,
    "best_disease": _best_disease,
}
