"""Intake throughput: registering and queueing a night of files, against the bare floor.

Generates N files (half DICOM OP, half JPEG; distinct content), a fraction of them
hostile (the decoding bombs of tests/corpus.py: codestreams larger than their header, too
many frames, empty fragments, raster headers claiming 60000x60000), then measures
(a) the bare cost of reading, hashing and parsing the header of each file, single
process, the limit intake can approach, and (b) ``Scheduler.ingest`` on a fresh
database and broker (probe with every check, register, enqueue), at 1 and at the
configured number of intake processes. Goal: the full intake at no less than 0.8 of the
bare rate.

    python bench/ingest.py [--files 2000] [--hostile-fraction 0.05] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from db.cli import upgrade
from mdf.broker import stop_embedded_redis
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.settings import Settings
from mdf.synthetic.fundus import generate_case
from scheduler.service import Scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import HOSTILE, build_corpus  # the test corpus: tests/ is not a package


def write_files(folder: Path, n: int, size: int) -> list[Path]:
    """N distinct files from a few synthetic fundus images, each marked with its number."""
    bases = [generate_case(seed, size=size).image for seed in range(8)]
    paths = []
    for i in range(n):
        image = bases[i % len(bases)].copy()
        bits = np.array([(i >> b) & 1 for b in range(16)], np.uint8) * 255
        image[:8, : 16 * 8] = np.repeat(bits, 8)[None, :, None]  # survives JPEG: 8x8 blocks
        if i % 2:
            path = folder / f"site{i % 4}" / f"img{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=95)
        else:
            path = folder / f"site{i % 4}" / f"img{i:05d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path = write_dicom_op(
                path, image, patient_id=f"P{i // 2:05d}", laterality="LR"[i % 4 // 2]
            )
        paths.append(path)
    return paths


def write_hostile(folder: Path, n: int, work: Path) -> list[Path]:
    """N hostile files cycling through the corpus's decoding bombs, each made distinct."""
    build_corpus(work / "corpus")
    names = sorted(HOSTILE)
    paths = []
    for i in range(n):
        name = names[i % len(names)]
        path = folder / "hostile" / f"{i:05d}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Trailing bytes after the image data, which no reader looks at, give a new sha256.
        path.write_bytes((work / "corpus" / name).read_bytes() + i.to_bytes(8, "little"))
        paths.append(path)
    return paths


def bare_pass(paths: list[Path]) -> float:
    """Read, hash and parse headers only; returns seconds."""
    start = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        if data[128:132] == b"DICM":
            pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        else:
            # The hostile rasters raise as they open.
            with contextlib.suppress(Image.DecompressionBombError), Image.open(io.BytesIO(data)):
                pass
    return time.perf_counter() - start


def intake_pass(
    folder: Path, work: Path, processes: int, args: argparse.Namespace, hostile: int
) -> float:
    data_dir = work / f"data-{processes}"
    database_url = args.database_url or f"sqlite:///{data_dir / 'mdf.sqlite3'}"
    upgrade(database_url)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=args.broker_url,
        intake_processes=processes,
        pseudonym_key="bench-pseudonym-key-of-32-bytes-or-more",
    )
    scheduler = Scheduler(settings)
    scheduler.app.connection_for_write().ensure_connection(max_retries=3)  # start the broker
    try:
        start = time.perf_counter()
        report, queued = scheduler.ingest(folder, batch_name=f"bench-{processes}")
        elapsed = time.perf_counter() - start
    finally:
        stop_embedded_redis(data_dir)
    good = args.files - hostile
    assert report.images == good and queued == good, (report, queued)
    assert report.rejected == hostile, report.rejected_by_code
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--processes", type=int, default=2, help="intake processes")
    parser.add_argument(
        "--hostile-fraction", type=float, default=0.05, help="share of hostile files"
    )
    parser.add_argument("--database-url", help="default: a fresh SQLite file per run")
    parser.add_argument("--broker-url", help="default: the embedded Redis")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "inbox"
        hostile = round(args.files * args.hostile_fraction)
        paths = write_files(folder, args.files - hostile, args.size)
        paths += write_hostile(folder, hostile, work)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        bare_pass(paths[:50])  # warm imports and the page cache alike for every pass
        bare = bare_pass(paths)
        runs = {n: intake_pass(folder, work, n, args, hostile) for n in sorted({1, args.processes})}
        if args.database_url:
            print("note: runs share the database; later runs see files already registered")

    bare_rate = args.files / bare
    best = max(args.files / seconds for seconds in runs.values())
    print(
        f"{args.files} files ({megabytes:.0f} MB, {args.size}px, half DICOM,"
        f" {hostile} hostile), {os.cpu_count()} cores"
    )
    print(f"{'pass':<34}{'seconds':>10}{'files/s':>10}")
    print(f"{'bare: read + sha256 + header':<34}{bare:>10.2f}{bare_rate:>10.0f}")
    for processes, seconds in runs.items():
        label = f"intake, {processes} process{'es' if processes > 1 else ''}"
        print(f"{label:<34}{seconds:>10.2f}{args.files / seconds:>10.0f}")
    print(f"bare_files_per_s: {bare_rate:.1f}")
    print(f"intake_files_per_s: {best:.1f}")
    print(f"fraction_of_bare: {best / bare_rate:.3f}")


if __name__ == "__main__":
    main()
