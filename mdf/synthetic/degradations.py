"""Ungradable photographs made from gradable ones, and photographs of no fundus at all.

The gradability check (mdf.imaging.quality) is calibrated and tested on real photographs;
real ungradable ones cannot leave the hospital, so these functions make them from good
ones with the faults seen at screening: defocus, camera shake, wrong exposure, an eyelid
and lashes in the way, a small pupil, a dirty lens, a misaligned camera. Each fault has a
severe level (a grader would send the patient back) and most a mild one (a grader still
reads it), so the check can be shown to refuse the first and keep the second.

Every function takes an RGB uint8 array and a numpy Generator and returns a new RGB uint8
array of the same size; a seed gives identical bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

__all__ = ["MILD", "NOT_FUNDUS", "SEVERE", "Degradation"]

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
GAMMA = 2.2  # photographs are stored gamma-encoded; exposure acts on linear light


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel convolved with a normalised kernel (FFT: large kernels stay fast)."""
    kernel = kernel / kernel.sum()
    planes = [fftconvolve(image[..., c].astype(np.float32), kernel, mode="same") for c in range(3)]
    return _to_uint8(np.stack(planes, axis=-1))


def defocus(image: np.ndarray, rng: np.random.Generator, radius: float = 0.012) -> np.ndarray:
    """Out of focus: a uniform disc (the lens's circle of confusion), radius a fraction of
    the long side. 0.012 (8 px at 700 px) erases the small vessels and smears the large."""
    r = max(radius * max(image.shape[:2]), 0.5)
    n = math.ceil(r)
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return _convolve(image, (xx**2 + yy**2 <= r * r).astype(np.float32))


def motion_blur(image: np.ndarray, rng: np.random.Generator, length: float = 0.03) -> np.ndarray:
    """Camera or eye movement: a line kernel at a random angle, length a fraction of the
    long side (0.03: 21 px at 700 px, beyond what a grader reads through)."""
    n = max(round(length * max(image.shape[:2])), 2)
    angle = rng.uniform(0, math.pi)
    canvas = Image.new("L", (2 * n + 1, 2 * n + 1))
    dx, dy = n / 2 * math.cos(angle), n / 2 * math.sin(angle)
    ImageDraw.Draw(canvas).line((n - dx, n - dy, n + dx, n + dy), fill=255, width=1)
    return _convolve(image, np.asarray(canvas, dtype=np.float32))


def exposure(image: np.ndarray, rng: np.random.Generator, stops: float) -> np.ndarray:
    """Flash too weak (negative stops) or too strong (positive), in linear light, with the
    sensor's read noise, which a dark exposure amplifies relative to the signal."""
    linear = (image.astype(np.float32) / 255) ** GAMMA * 2.0**stops
    linear += rng.normal(0, 0.0004, image.shape).astype(np.float32)
    return _to_uint8(np.clip(linear, 0, 1) ** (1 / GAMMA) * 255)


def _fov(image: np.ndarray) -> tuple[float, float, float]:
    """Centre (x, y) and radius of the bright field, from the pixels clearly above black."""
    bright = image.max(axis=-1) > 30
    ys, xs = np.nonzero(bright)
    if xs.size == 0:
        h, w = image.shape[:2]
        return w / 2, h / 2, min(h, w) / 2
    return float(xs.mean()), float(ys.mean()), (xs.max() - xs.min()) / 2


def eyelid(image: np.ndarray, rng: np.random.Generator, cover: float = 0.4) -> np.ndarray:
    """Upper eyelid and lashes: a dark, out-of-focus skin band over the top `cover` of the
    field with a curved lower edge, and blurred lash strokes hanging below it."""
    h, w = image.shape[:2]
    cx, cy, radius = _fov(image)
    edge = cy - radius + 2 * cover * radius  # the lid's lowest point, on the centre line
    lid = Image.new("L", (w, h))
    draw = ImageDraw.Draw(lid)
    sag = radius * rng.uniform(0.15, 0.3)  # the lid margin curves up towards the corners
    draw.ellipse((cx - 3 * radius, edge - 2 * sag - 4 * radius, cx + 3 * radius, edge), fill=255)
    for _ in range(60):
        x = rng.uniform(cx - radius, cx + radius)
        y0 = edge - sag * ((x - cx) / radius) ** 2 - 5
        length = radius * rng.uniform(0.08, 0.25)
        bend = rng.normal(0, 0.3)
        end = (x + length * bend, y0 + length)
        draw.line((x, y0, *end), fill=int(rng.uniform(150, 255)), width=max(w // 200, 2))
    alpha = np.asarray(lid.filter(ImageFilter.GaussianBlur(w / 150)), np.float32)[..., None] / 255
    skin = np.array([55, 30, 22], np.float32) * rng.uniform(0.6, 1.2)
    return _to_uint8(image * (1 - alpha) + skin * alpha)


def small_pupil(image: np.ndarray, rng: np.random.Generator, clear: float = 0.35) -> np.ndarray:
    """Small pupil: light reaches only the centre; beyond `clear` of the field's radius the
    picture falls off steeply to near black, the vignetting a non-dilated eye gives."""
    h, w = image.shape[:2]
    cx, cy, radius = _fov(image)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy) / radius
    falloff = np.clip(1 - (r - clear) / 0.2, 0.04, 1.0) ** 2
    return _to_uint8(image * falloff[..., None])


def dirty_lens(image: np.ndarray, rng: np.random.Generator, veil: float = 0.6) -> np.ndarray:
    """Dirty or fogged front lens: a whitish veiling glare of strength `veil` over the whole
    field, stronger in a few smudges, which also blur the detail under them."""
    h, w = image.shape[:2]
    smudges = gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), min(h, w) / 12)
    smudges = (smudges - smudges.min()) / (np.ptp(smudges) + 1e-6)
    alpha = np.clip(veil * (0.6 + 0.8 * smudges), 0, 0.95)[..., None]
    soft = gaussian_filter(image.astype(np.float32), (w / 250, w / 250, 0))
    detail = image * (1 - smudges[..., None]) + soft * smudges[..., None]
    glare = np.array([205, 195, 185], np.float32) * (image.max(axis=-1, keepdims=True) > 30)
    return _to_uint8(detail * (1 - alpha) + glare * alpha)


def off_centre(image: np.ndarray, rng: np.random.Generator, shift: float = 0.4) -> np.ndarray:
    """Camera misaligned: the field shifted by `shift` of the width, partly out of frame."""
    h, w = image.shape[:2]
    dx = round(shift * w) * int(rng.choice((-1, 1)))
    dy = round(shift * h * rng.uniform(-0.3, 0.3))
    out = np.zeros_like(image)
    src = image[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    out[max(dy, 0) : max(dy, 0) + src.shape[0], max(dx, 0) : max(dx, 0) + src.shape[1]] = src
    return out


def document(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A scanned letter: off-white paper with lines of dark text (a referral, misfiled)."""
    h, w = shape
    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 250, 3)))
    draw = ImageDraw.Draw(page)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz      "))
    for y in range(h // 12, h - h // 12, max(h // 30, 12)):
        words = "".join(rng.choice(letters, int(rng.integers(30, 90))))
        draw.text((w // 12, y), words, fill=(30, 30, 40))
    return np.asarray(page).copy()


def grey_card(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A grey calibration card filling the frame, with a little shading and noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1 - 0.15 * ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)
    grey = rng.uniform(90, 160) * shade[..., None] + rng.normal(0, 3, (h, w, 3))
    return _to_uint8(grey)


def landscape(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A natural-looking outdoor photograph: sky gradient, a textured ground, a sun glare."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * rng.uniform(0.4, 0.6) + h * 0.05 * np.sin(xx / w * 6 + rng.uniform(0, 6))
    sky = np.stack([110 + 90 * yy / h, 150 + 70 * yy / h, 235 - 20 * yy / h], -1)
    texture = gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), 3)[..., None]
    ground = np.array([70, 110, 45], np.float32) * (1 + 2.5 * texture)
    img = np.where((yy > horizon)[..., None], ground, sky)
    sx, sy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.05, 0.3) * h
    img += 120 * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (w / 20) ** 2))[..., None]
    return _to_uint8(img + rng.normal(0, 4, img.shape))


def black_frame(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The camera fired with nothing in front of it, or the shutter stayed closed."""
    return _to_uint8(rng.normal(3, 1.5, (*shape, 3)))


SEVERE: dict[str, Degradation] = {
    "defocus": defocus,
    "motion_blur": motion_blur,
    "under_exposure": lambda image, rng: exposure(image, rng, stops=-4.5),
    "over_exposure": lambda image, rng: exposure(image, rng, stops=3.5),
    "eyelid": eyelid,
    "small_pupil": small_pupil,
    "dirty_lens": dirty_lens,
    "off_centre": off_centre,
}
# Faults a grader still reads through: the check must keep these gradable.
MILD: dict[str, Degradation] = {
    "defocus": lambda image, rng: defocus(image, rng, radius=0.002),
    "motion_blur": lambda image, rng: motion_blur(image, rng, length=0.005),
    "under_exposure": lambda image, rng: exposure(image, rng, stops=-1.0),
    "over_exposure": lambda image, rng: exposure(image, rng, stops=0.5),
    "dirty_lens": lambda image, rng: dirty_lens(image, rng, veil=0.12),
}
NOT_FUNDUS: dict[str, Callable[[tuple[int, int], np.random.Generator], np.ndarray]] = {
    "document": document,
    "grey_card": grey_card,
    "landscape": landscape,
    "black_frame": black_frame,
}
