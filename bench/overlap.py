"""Does overlapping a chunk's preprocessing with the model pay on this machine?

A chunk of ``--chunk-size`` synthetic camera photographs (bench/time_split.py's, 3504 x 2336
JPEG by default) goes through the worker's own ``preprocess`` and ``classify`` with the tiny
model in three ways: in one pass once all are prepared (what a worker does with its model on
the CPU); overlapped (the model on each batch of images ready, in order, while the pool
prepares the next); and two such chunks in flight at once, taking turns on the model (what a
worker does with its model on a GPU: the next chunk is prepared while one is on the model).
Wall-clock ms per image, the median of ``--rounds`` each: the whole, the model's passes, and
the preprocessing left exposed (the time outside the model), with the passes the overlap
made. On the CPU the model and the pools share the cores and the GIL: little preprocessing
is exposed, but the model's passes take longer. bench/gpu.py runs the same comparison with
the 11B model on a GPU.

    python bench/overlap.py [--rounds 3] [--chunk-size 16] [--kind 3504x2336-jpeg]
                            [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from time_split import KINDS, write_photographs  # bench/time_split.py, beside this file

from db.lifecycle import ClaimedImage
from db.stored_path import to_stored
from mdf.imaging.quality import QualityThresholds
from worker.inference import classify, preprocess, usable_cpus
from worker.serving import Classifier


def claimed(paths: Sequence[Path]) -> list[ClaimedImage]:
    return [
        ClaimedImage(
            id=index,
            batch_id=1,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            source_path=to_stored(path),
            frame=0,
            clinical_text=None,
            attempts=0,
        )
        for index, path in enumerate(paths)
    ]


def chunk(
    images: list[ClaimedImage],
    classifier: Classifier,
    overlap: bool,
    turn: threading.Lock | None = None,
) -> tuple[float, float, list[int]]:
    """Wall-clock ms per image of one chunk, preprocessing and model, the model's share of
    it (its passes' ms per image) and its passes; each pass holds ``turn``, if given."""
    passes = []
    model_s = 0.0
    start = time.perf_counter()
    for ready, _failed in preprocess(
        images,
        classifier,
        max_pixels=100_000_000,
        max_frames=1,
        max_bytes=100_000_000,
        quality=QualityThresholds(),
        overlap=overlap,
        threads=usable_cpus(),
    ):
        with turn or contextlib.nullcontext():
            began = time.perf_counter()
            batch = [item for item in ready if item.input is not None]
            classify(classifier, batch, max_new_tokens=16)
            model_s += time.perf_counter() - began
        passes.append(len(ready))
    elapsed_s = time.perf_counter() - start
    return elapsed_s * 1000 / len(images), model_s * 1000 / len(images), passes


def two_in_flight(images: list[ClaimedImage], classifier: Classifier) -> tuple[float, float]:
    """Two chunks at once, overlapped, taking turns on the model, as a worker whose model is
    off the CPU runs them: wall-clock ms per image of both, and the model's."""
    turn = threading.Lock()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as chunks:
        runs = list(chunks.map(lambda _: chunk(images, classifier, True, turn), range(2)))
    elapsed_ms = (time.perf_counter() - start) * 1000
    return elapsed_ms / (2 * len(images)), sum(model for _, model, _ in runs) / 2


def compare(classifier: Classifier, images: list[ClaimedImage], rounds: int) -> dict[str, str]:
    """``name: value`` pairs, medians over ``rounds`` of each way in ms per image: the whole
    chunk, the model's passes, and what is left exposed of preprocessing (the time outside
    the model) with its share; and the overlap's passes."""
    chunk(images, classifier, overlap=False)  # warm up
    ways = {
        "one_pass": lambda: chunk(images, classifier, overlap=False)[:2],
        "overlapped": lambda: chunk(images, classifier, overlap=True)[:2],
        "two_in_flight": lambda: two_in_flight(images, classifier),
    }
    results: dict[str, str] = {}
    for name, way in ways.items():
        runs = [way() for _ in range(rounds)]
        total = statistics.median(ms for ms, _ in runs)
        exposed = statistics.median(ms - model for ms, model in runs)
        results[f"{name}_ms_per_image"] = f"{total:.1f}"
        results[f"{name}_model_ms_per_image"] = f"{statistics.median(m for _, m in runs):.1f}"
        results[f"{name}_exposed_preprocessing_ms_per_image"] = f"{exposed:.1f}"
        results[f"{name}_exposed_preprocessing_share"] = f"{exposed / total:.3f}"
    results["overlapped_passes"] = str(chunk(images, classifier, overlap=True)[2])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--kind", default="3504x2336-jpeg", choices=sorted(KINDS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from mdf_model import build_tiny_checkpoint, load_classifier

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as tmp:
        work = Path(tmp)
        classifier = load_classifier(build_tiny_checkpoint(work / "checkpoint"), args.device)
        images = claimed(write_photographs(work / "photographs", args.kind, args.chunk_size))
        for name, value in compare(classifier, images, args.rounds).items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
