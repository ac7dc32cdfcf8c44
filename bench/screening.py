"""What the gradability assessment adds to a worker's preprocessing, per image and per chunk.

A worker reads, decodes and prepares each image of a chunk before the chunk's one forward
pass; it now also assesses each decoded image (``mdf.imaging.quality.assess``). This times
that assessment against the read and decode it follows, on the STARE photographs as
delivered (700x605 PNG) and upscaled to a modern camera's 3504x2336 (as JPEG, as cameras
send them). CPU time is printed beside wall time: on a shared machine the wall time
includes waiting for a core, the CPU time is what a core spends.

    python bench/screening.py [--data DIR] [--repeat N]   # DIR: the STARE folder
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from mdf.imaging import decode_frame
from mdf.imaging.quality import assess
from mdf.settings import Settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stare"


def timed(work: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call of ``work``, after one call to warm up."""
    work()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        work()
    return (
        (time.perf_counter() - wall) * 1000 / repeat,
        (time.process_time() - cpu) * 1000 / repeat,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    paths = sorted((args.data / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"no STARE photographs in {args.data / 'images'}")
    settings = Settings()
    chunk = settings.chunk_size

    def per_image(files: list[bytes]) -> dict[str, float]:
        frames = [decode_frame(data, 0, max_pixels=settings.max_image_pixels) for data in files]

        def decode() -> None:
            for data in files:
                decode_frame(data, 0, max_pixels=settings.max_image_pixels)

        def assessment() -> None:
            for frame in frames:
                assess(frame)

        (decode_wall, decode_cpu), (assess_wall, assess_cpu) = (
            timed(decode, args.repeat),
            timed(assessment, args.repeat),
        )
        n = len(files)
        return {
            "decode_ms": decode_wall / n,
            "decode_cpu_ms": decode_cpu / n,
            "assess_ms": assess_wall / n,
            "assess_cpu_ms": assess_cpu / n,
        }

    with tempfile.TemporaryDirectory() as folder:
        large = []
        for path in paths[:5]:
            target = Path(folder) / f"{path.stem}.jpg"
            Image.open(path).convert("RGB").resize((3504, 2336)).save(target, quality=95)
            large.append(target.read_bytes())
        results = {
            "700x605": per_image([path.read_bytes() for path in paths]),
            "3504x2336": per_image(large),
        }

    print(f"{'size':<10} {'decode ms':>10} {'(cpu)':>7} {'assess ms':>10} {'(cpu)':>7}")
    for size, r in results.items():
        print(
            f"{size:<10} {r['decode_ms']:>10.1f} {r['decode_cpu_ms']:>7.1f} "
            f"{r['assess_ms']:>10.1f} {r['assess_cpu_ms']:>7.1f}"
        )
    for size, r in results.items():
        for name, value in r.items():
            print(f"{name}_{size}: {value:.1f}")
        print(f"assess_cpu_ms_per_chunk_of_{chunk}_{size}: {r['assess_cpu_ms'] * chunk:.0f}")
    print(f"load_average_1min: {os.getloadavg()[0]:.2f}  # above the core count: wall waits")


if __name__ == "__main__":
    main()
