"""Gradability on real photographs: the STARE originals, their degradations, non-fundus images.

Prints a table (per set: images, ungradable rate, most common reason) and `name: value`
lines: the originals' gradable rate, each severe degradation's ungradable rate, each
mild one's (should stay near 0), and the assessment's CPU milliseconds per image at the
source resolution (700x605), at DRIVE's 565x584, at 1752x1168 (a 3504x2336 camera JPEG as
the worker decodes it, at half its size) and at 3504x2336 (a PNG or TIFF, decoded whole).

    python bench/gradability.py [--data DIR]   # DIR: the STARE folder (images/*.png)
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from decode_reduced import camera_jpeg  # bench/decode_reduced.py, beside this file
from PIL import Image

from mdf.imaging import decode_reduced
from mdf.imaging.quality import Quality, QualityThresholds, assess
from mdf.synthetic.degradations import MILD, NOT_FUNDUS, SEVERE

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stare"


def row(name: str, results: list[Quality]) -> tuple[str, int, float, str]:
    """(set, images, ungradable rate, most common reason)."""
    reasons = Counter(r for q in results if not q.gradable for r in q.reasons)
    common = reasons.most_common(1)[0][0] if reasons else "-"
    return name, len(results), sum(not q.gradable for q in results) / len(results), str(common)


def cpu_ms_per_image(images: list[np.ndarray], repeat: int = 3) -> float:
    """CPU time, which other processes on the machine's cores do not inflate as they do
    wall-clock time (they still slow it somewhat: caches, memory bandwidth)."""
    assess(images[0])  # warm up imports and caches
    start = time.process_time()
    for _ in range(repeat):
        for image in images:
            assess(image)
    return (time.process_time() - start) * 1000 / (repeat * len(images))


def camera_decoded(image: np.ndarray) -> np.ndarray:
    """The photograph as a 10 MP camera's JPEG, decoded as the worker decodes it for the
    tiny model (at least twice the working size: at half, 1752x1168)."""
    long_side = 2 * QualityThresholds().working_size
    return decode_reduced(camera_jpeg(image), long_side=long_side).pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    paths = sorted((args.data / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"no photographs in {args.data / 'images'}")
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    shape = originals[0].shape[:2]
    rows = [row("original", [assess(image) for image in originals])]
    for level, degradations in (("severe", SEVERE), ("mild", MILD)):
        for name, degrade in degradations.items():
            images = (degrade(im, np.random.default_rng(i)) for i, im in enumerate(originals))
            rows.append(row(f"{level}_{name}", [assess(image) for image in images]))
    for name, make in NOT_FUNDUS.items():
        rows.append(row(name, [assess(make(shape, np.random.default_rng(i))) for i in range(5)]))

    print(f"{'set':24s} {'images':>6s} {'ungradable':>10s}  most common reason")
    for name, n, rate, reason in rows:
        print(f"{name:24s} {n:6d} {rate:10.2f}  {reason}")
    print(f"gradable_rate_originals: {1 - rows[0][2]:.3f}")
    for name, _, rate, _ in rows[1:]:
        print(f"ungradable_rate_{name}: {rate:.3f}")
    print(f"cpu_ms_per_image: {cpu_ms_per_image(originals):.1f}  # {shape[1]}x{shape[0]}")
    drive = [np.asarray(Image.fromarray(im).resize((565, 584))) for im in originals]
    print(f"cpu_ms_per_image_565x584: {cpu_ms_per_image(drive):.1f}")
    decoded = [camera_decoded(im) for im in originals]
    print(f"cpu_ms_per_image_1752x1168: {cpu_ms_per_image(decoded):.1f}")
    large = [np.asarray(Image.fromarray(im).resize((3504, 2336))) for im in originals[:4]]
    print(f"cpu_ms_per_image_3504x2336: {cpu_ms_per_image(large, repeat=2):.1f}")


if __name__ == "__main__":
    main()
