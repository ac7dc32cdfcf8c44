"""Where a night's time goes: run-batch's time per image split into decode, preprocessing,
model and database write, for photographs of the sizes screening cameras deliver.

For each kind of photograph, ``--images`` synthetic fundus photographs of that size (the
fundus painted at the frame's shorter side and centred on black, as cameras frame it) are

(b) classified end to end as in bench/pipeline.py: ingest, Redis, one ``mdf worker`` process
    with the tiny model on the CPU, the database (SQLite unless ``--database-url``). The
    worker's ``chunk_finished`` log lines give its wall-clock time per stage: how long the
    model waited for preprocessing (read and verify the registered bytes, decode, assess
    gradability, prepare the model input; the rest of it ran while the model ran),
    inference (scores, masks and text) and write (masks at the source size, then one
    database transaction), and the images' own preprocessing times, summed over threads;
(a) timed step by step in this process (CPU time) with the worker's own functions: read and
    verify, decode (a JPEG reduced to what the model and the gradability check use), assess,
    prepare, and the masks of its write stage.

Printed per kind: the end-to-end wall-clock time per image (what a night waits for), and
what each stage leaves exposed of it, in ms per image with its share: decode (read, verify
and decode), preprocessing (assess and prepare), model, write (masks at the source size and
one database transaction) and outside the worker's chunks (ingest, queueing, claims). The
exposed preprocessing is the worker's wait for it (a chunk's images are prepared side by
side, a thread per core, while the model runs on those prepared before), divided between
decode and the rest in the proportions of (a)'s CPU times; ``hidden`` is the preprocessing
that ran under the model (the images' own times, over the threads, less the wait). Then
``name: value`` lines, with (a)'s steps, which show how much of the write is masks. The
sizes: 3504 x 2336 JPEG (a 10 MP fundus camera), 565 x 584 TIFF (DRIVE), 700 x 605 PNG
(STARE, delivered as PPM, which intake does not read) and 512 x 512 JPEG.

    python bench/time_split.py [--images 32] [--kinds 3504x2336-jpeg,...] [--chunk-size 16]
                               [--threads 1] [--database-url ...] [--broker-url ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pipeline import end_to_end, fresh_database  # bench/pipeline.py, beside this file

from mdf.broker import stop_embedded_redis
from mdf.imaging import decode_reduced
from mdf.imaging.quality import assess
from mdf.settings import Settings
from mdf.synthetic.fundus import generate_case
from worker.content import read_registered
from worker.inference import decode_side, usable_cpus
from worker.masks import ImageMask, save_masks
from worker.screening import quality_thresholds

# name -> (width, height, Pillow format, suffix)
KINDS = {
    "3504x2336-jpeg": (3504, 2336, "JPEG", ".jpg"),
    "565x584-tiff": (565, 584, "TIFF", ".tif"),
    "700x605-png": (700, 605, "PNG", ".png"),
    "512x512-jpeg": (512, 512, "JPEG", ".jpg"),
}
STAGES = ("decode", "preprocessing", "model", "write", "outside_chunks")
WORKER_TIMINGS = ("preprocess_ms", "preprocess_wait_ms", "inference_ms", "write_ms", "total_ms")


def write_photographs(folder: Path, kind: str, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct photographs of ``kind``: a fundus at the frame's shorter side,
    centred on a black frame of the camera's size."""
    width, height, form, suffix = KINDS[kind]
    side = min(width, height)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        frame[top : top + side, left : left + side] = generate_case(rng, size=side).image
        path = folder / f"{kind}-{index:04d}{suffix}"
        options = {"quality": 95} if form == "JPEG" else {}
        Image.fromarray(frame).save(path, form, **options)
        paths.append(path)
    return paths


def worker_stages(log: Path) -> dict[str, float]:
    """Milliseconds the worker spent per stage, summed over its ``chunk_finished`` lines."""
    totals = dict.fromkeys(WORKER_TIMINGS, 0.0)
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "chunk_finished":
            for key in totals:
                totals[key] += float(event.get(key, 0.0))
    return totals


def in_process(paths: Sequence[Path], checkpoint: Path, settings: Settings) -> dict[str, float]:
    """CPU milliseconds per image of each step the worker takes, with its own functions:
    read (the registered bytes, hash verified), decode, assess (gradability), prepare (the
    model's input) and masks (written at the source size, from the model's output). CPU
    time, threads included, is what a busy shared machine distorts least."""
    import torch

    from mdf_model import load_classifier

    torch.set_num_threads(1)
    classifier = load_classifier(checkpoint)
    thresholds = quality_thresholds(settings.quality)
    side = decode_side(classifier, thresholds)
    spent = dict.fromkeys(("read", "decode", "assess", "prepare", "masks"), 0.0)
    prepared, sizes = [], []
    for path in paths:
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        clock = time.process_time()
        data = read_registered(path, sha256, max_bytes=settings.max_file_bytes)
        spent["read"] += time.process_time() - clock
        clock = time.process_time()
        decoded = decode_reduced(data, long_side=side, max_pixels=settings.max_image_pixels)
        pixels = decoded.pixels
        spent["decode"] += time.process_time() - clock
        clock = time.process_time()
        assess(pixels, thresholds)
        spent["assess"] += time.process_time() - clock
        clock = time.process_time()
        prepared.append(classifier.prepare(pixels))
        spent["prepare"] += time.process_time() - clock
        sizes.append(decoded.size)
    with tempfile.TemporaryDirectory(prefix="mdf-masks-") as masks_dir:
        for first in range(0, len(prepared), settings.chunk_size):
            chunk = range(first, min(first + settings.chunk_size, len(prepared)))
            results = classifier.classify_prepared(
                [prepared[i] for i in chunk], generate_text=False
            )
            clock = time.process_time()
            save_masks(
                [ImageMask(i, r.mask, sizes[i]) for i, r in zip(chunk, results, strict=True)],
                classifier.mask_channels,
                Path(masks_dir),
            )
            spent["masks"] += time.process_time() - clock
    return {step: 1000 * seconds / len(paths) for step, seconds in spent.items()}


@dataclass(frozen=True)
class Split:
    kind: str
    images: int
    end_to_end_ms: float  # per image
    stages: dict[str, float]  # per image, STAGES: wall-clock time exposed
    hidden_ms: float  # per image: preprocessing that ran while the model ran
    detail: dict[str, float]  # per image: the worker's own stages and the in-process steps


def split(
    kind: str, paths: Sequence[Path], folder: Path, args: argparse.Namespace, work: Path
) -> Split:
    """The worker's exposed wall-clock stages, its wait for preprocessing divided between
    decode (read and decode) and the rest in the proportions of the in-process CPU times."""
    settings = Settings(data_dir=work / "data", chunk_size=args.chunk_size)
    steps = in_process(paths, args.checkpoint, settings)
    with fresh_database(args.database_url, work) as url:
        run = end_to_end(folder, len(paths), 1, url, args, work)
    worker = {k: v / len(paths) for k, v in worker_stages(work / "worker-1-0.log").items()}
    total = 1000 * run.seconds / len(paths)
    decode_share = (steps["read"] + steps["decode"]) / sum(
        steps[step] for step in ("read", "decode", "assess", "prepare")
    )
    threads = min(args.chunk_size, usable_cpus())
    stages = {
        "decode": worker["preprocess_wait_ms"] * decode_share,
        "preprocessing": worker["preprocess_wait_ms"] * (1 - decode_share),
        "model": worker["inference_ms"],
        "write": worker["write_ms"],
        "outside_chunks": total - worker["total_ms"],
    }
    detail = {f"worker_{k}": v for k, v in worker.items()} | {
        f"cpu_{k}_ms": v for k, v in steps.items()
    }
    hidden = max(worker["preprocess_ms"] / threads - worker["preprocess_wait_ms"], 0.0)
    return Split(kind, len(paths), total, stages, hidden, detail)


def report(splits: Sequence[Split], args: argparse.Namespace) -> None:
    print(
        f"tiny model on the CPU, one worker, chunk size {args.chunk_size}, {usable_cpus()} "
        f"cores, {args.threads} torch thread(s); wall-clock ms per image: end to end, and each "
        "stage's exposed time (share of the end-to-end time); hidden: preprocessing under the model"
    )
    header = f"{'photograph':<16}{'images':>7}{'total':>9}" + "".join(f"{s:>18}" for s in STAGES)
    print(header + f"{'hidden':>9}")
    for s in splits:
        cells = "".join(
            f"{s.stages[stage]:>10.1f} ({100 * s.stages[stage] / s.end_to_end_ms:>4.1f}%)"
            for stage in STAGES
        )
        print(f"{s.kind:<16}{s.images:>7}{s.end_to_end_ms:>9.1f}{cells}{s.hidden_ms:>9.1f}")
    for s in splits:
        key = s.kind.replace("-", "_")
        print(f"{key}_end_to_end_ms_per_image: {s.end_to_end_ms:.1f}")
        print(f"{key}_hidden_preprocessing_ms_per_image: {s.hidden_ms:.1f}")
        for stage in STAGES:
            print(f"{key}_{stage}_ms_per_image: {s.stages[stage]:.1f}")
            print(f"{key}_{stage}_share: {s.stages[stage] / s.end_to_end_ms:.3f}")
        for name, value in s.detail.items():
            print(f"{key}_{name}: {value:.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photographs per kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"from {sorted(KINDS)}")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--database-url", help="a PostgreSQL server (admin URL); default SQLite")
    parser.add_argument("--broker-url", help="default: the embedded Redis")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {sorted(KINDS)}")

    from mdf_model import build_tiny_checkpoint

    splits = []
    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as tmp:
        work = Path(tmp)
        args.checkpoint = build_tiny_checkpoint(work / "checkpoint")
        try:
            for seed, kind in enumerate(kinds):
                folder = work / f"inbox-{kind}"
                paths = write_photographs(folder, kind, args.images, seed=seed)
                splits.append(split(kind, paths, folder, args, work))
        finally:
            stop_embedded_redis(work / "data")
    report(splits, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
