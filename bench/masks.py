"""Writing a prediction's masks: milliseconds per image.

The probability maps are the STARE vessel masks, letterboxed to the real model's U-Net
side (512) and blurred into soft probabilities, as the model's sigmoid gives them; a
second channel (lesions) is mostly zero with a few spots. Each image's two channels, for a
3504x2336 photograph, are written as PNG by ``worker.masks.save_masks``, the worker's own
code, a chunk at a time (its threads use every core): the picture region at the model's
resolution with its geometry. For comparison: what earlier releases wrote, the channels
upsampled to 3504x2336 (zlib level 1, run-length strategy), the time ``read_mask`` takes to
give a channel back at 3504x2336 (delivery's SEG does, once per photograph sent), and a
worst case of pure noise, which no PNG compresses.

    python bench/masks.py [--data DIR] [--repeat 3] [--chunk-size 16]   # DIR: STARE (vessels/*)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mdf.imaging.masks import read_mask, to_source
from worker.masks import ImageMask, save_masks

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stare"
UNET_SIDE = 512
SOURCE = (3504, 2336)
CHANNELS = ("vessels", "lesions")


def probability_map(path: Path, rng: np.random.Generator) -> np.ndarray:
    """(2, 512, 512) uint8: the vessel mask made soft, and a few lesion spots."""
    vessels = Image.open(path).convert("L")
    side = max(vessels.size)
    square = Image.new("L", (side, side))
    square.paste(vessels, ((side - vessels.width) // 2, (side - vessels.height) // 2))
    soft = square.resize((UNET_SIDE, UNET_SIDE), Image.Resampling.BILINEAR)
    soft = soft.filter(ImageFilter.GaussianBlur(1.5))
    lesions = np.zeros((UNET_SIDE, UNET_SIDE), dtype=np.float32)
    yy, xx = np.mgrid[:UNET_SIDE, :UNET_SIDE]
    for y, x in rng.integers(150, 360, size=(4, 2)):
        lesions = np.maximum(lesions, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30.0))
    return np.stack([np.asarray(soft), (lesions * 255).astype(np.uint8)])


def ms_per_image(
    maps: list[np.ndarray], directory: Path, repeat: int, chunk: int
) -> tuple[float, float]:
    """Wall and CPU milliseconds per image (CPU time does not swing with other work on a
    shared machine), in chunks of ``chunk`` images, as a worker writes them."""
    masks = [ImageMask(index, mask, SOURCE) for index, mask in enumerate(maps)]
    save_masks(masks[:1], CHANNELS, directory)  # warm up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for first in range(0, len(masks), chunk):
            save_masks(masks[first : first + chunk], CHANNELS, directory)
    images = repeat * len(maps)
    return (
        (time.perf_counter() - start) * 1000 / images,
        (time.process_time() - cpu) * 1000 / images,
    )


def source_size_png_ms(maps: list[np.ndarray]) -> tuple[float, float]:
    """CPU milliseconds per image written at the source size, as earlier releases did; KiB."""
    start, size = time.process_time(), 0
    for mask in maps:
        for plane in mask:
            buffer = BytesIO()
            to_source(plane, SOURCE).save(buffer, "PNG", compress_level=1, compress_type=3)
            size += buffer.tell()
    return (time.process_time() - start) * 1000 / len(maps), size / 1024 / len(maps)


def read_ms(directory: Path) -> float:
    """CPU milliseconds to read one written channel back at the source size."""
    files = sorted(directory.glob("*.vessels.png"))
    start = time.process_time()
    for path in files:
        read_mask(path)
    return (time.process_time() - start) * 1000 / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=16, help="images written together")
    args = parser.parse_args()
    paths = sorted((args.data / "vessels").glob("*"))
    if not paths:
        raise SystemExit(f"no vessel masks in {args.data / 'vessels'}")
    rng = np.random.default_rng(0)
    maps = [probability_map(path, rng) for path in paths]
    noise = [rng.integers(0, 256, (2, UNET_SIDE, UNET_SIDE), dtype=np.uint8) for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="mdf-bench-masks-") as tmp:
        directory = Path(tmp)
        ms, cpu_ms = ms_per_image(maps, directory, args.repeat, args.chunk_size)
        kib = sum(p.stat().st_size for p in directory.glob("*.png")) / 1024 / len(maps)
        read_channel_ms = read_ms(directory)
        noise_ms, _ = ms_per_image(noise, directory, 1, args.chunk_size)
    source_ms, source_kib = source_size_png_ms(maps[:5])
    width, height = SOURCE
    print(
        f"{len(maps)} STARE vessel maps, {len(CHANNELS)} channels, {width}x{height} "
        f"photographs, chunks of {args.chunk_size}, {os.cpu_count()} cores"
    )
    print(f"masks_ms_per_image: {ms:.1f}")
    print(f"masks_cpu_ms_per_image: {cpu_ms:.1f}")
    print(f"masks_kib_per_image: {kib:.0f}")
    print(f"masks_read_cpu_ms_per_channel_at_source_size: {read_channel_ms:.1f}")
    print(f"masks_cpu_ms_per_image_at_source_size: {source_ms:.1f}")
    print(f"masks_kib_per_image_at_source_size: {source_kib:.0f}")
    print(f"masks_ms_per_image_noise: {noise_ms:.1f}")


if __name__ == "__main__":
    main()
