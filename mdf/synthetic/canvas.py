"""Drawing primitives of the synthetic fundus: soft round spots, Pillow layers, scatter.

Painting works on a float32 RGB image (0..1). Shapes are drawn by Pillow and alpha-blended
with numpy inside their bounding box only, which keeps a 512 x 512 case at about 25 ms on one
CPU core. Painters return their full-size alpha too: the masks are made from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "Box",
    "Colour",
    "Eye",
    "Layer",
    "Point",
    "blend",
    "full_size",
    "grid",
    "paint_spot",
    "scatter",
    "soft_disc",
]

Point = tuple[float, float]  # (x, y) in pixels
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive
Colour = tuple[float, float, float]  # RGB, 0..1


@dataclass(frozen=True)
class Eye:
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


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates, shared read-only: every spot slices them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return xx, yy


def blend(img: np.ndarray, alpha: np.ndarray, colour: Colour, box: Box) -> None:
    """Alpha-blend `colour` into `img` inside `box` (x0, y0, x1, y1), in place."""
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1]
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * np.asarray(colour, dtype=np.float32)


def soft_disc(eye: Eye, centre: Point, radius: float, edge: float) -> tuple[np.ndarray, Box]:
    """Alpha (1 inside, smooth edge) of a round spot, and its bounding box."""
    xx, yy = grid(eye.size)
    reach = radius + 2 * edge
    x0, y0 = max(int(centre[0] - reach), 0), max(int(centre[1] - reach), 0)
    x1, y1 = min(int(centre[0] + reach) + 1, eye.size), min(int(centre[1] + reach) + 1, eye.size)
    d = np.hypot(xx[y0:y1, x0:x1] - centre[0], yy[y0:y1, x0:x1] - centre[1])
    alpha = np.clip((radius + edge - d) / (2 * edge), 0.0, 1.0)
    return alpha, (x0, y0, x1, y1)


def full_size(eye: Eye, alpha: np.ndarray, box: Box) -> np.ndarray:
    full = np.zeros((eye.size, eye.size), dtype=np.float32)
    full[box[1] : box[3], box[0] : box[2]] = alpha
    return full


def paint_spot(
    img: np.ndarray,
    eye: Eye,
    centre: Point,
    radius: float,
    edge: float,
    colour: Colour,
    opacity: float,
) -> np.ndarray:
    """Blend a round spot; return its full-size alpha (for masks)."""
    alpha, box = soft_disc(eye, centre, radius, edge)
    blend(img, alpha * opacity, colour, box)
    return full_size(eye, alpha, box)


class Layer:
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
            blend(img, alpha[y0:y1, x0:x1] * opacity, colour, box)
        return alpha


def scatter(
    rng: np.random.Generator, n: int, centre: Point, r_min: float, r_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniformly over the annulus r_min..r_max around `centre`."""
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, n))
    t = rng.uniform(0, 2 * math.pi, n)
    return centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)
