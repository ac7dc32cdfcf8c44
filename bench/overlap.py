"""Does overlapping a chunk's preprocessing with the model pay on this machine?

A chunk of ``--chunk-size`` synthetic camera photographs (bench/time_split.py's, 3504 x 2336
JPEG by default) goes through the worker's own ``preprocess`` and ``classify`` with the tiny
model, alternately in one pass once all are prepared (what a worker does with its model on
the CPU) and overlapped (the model on each batch of images ready, in order, while the pool
prepares the next: what a worker does with its model on a GPU). Wall-clock ms per image,
the median of ``--rounds`` chunks each, with the passes the overlap made. On the CPU the
model and the pool share the cores, and the passes of a split chunk cost more than one.

    python bench/overlap.py [--rounds 3] [--chunk-size 16] [--kind 3504x2336-jpeg]
                            [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from time_split import KINDS, write_photographs  # bench/time_split.py, beside this file

from db.lifecycle import ClaimedImage
from db.stored_path import to_stored
from mdf.imaging.quality import QualityThresholds
from worker.inference import classify, preprocess
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
    images: list[ClaimedImage], classifier: Classifier, overlap: bool
) -> tuple[float, list[int]]:
    """Wall-clock ms per image of one chunk, preprocessing and model, and its passes."""
    passes = []
    start = time.perf_counter()
    for ready, _failed in preprocess(
        images,
        classifier,
        max_pixels=100_000_000,
        max_frames=1,
        max_bytes=100_000_000,
        quality=QualityThresholds(),
        overlap=overlap,
    ):
        classify(classifier, [item for item in ready if item.input is not None], max_new_tokens=16)
        passes.append(len(ready))
    return (time.perf_counter() - start) * 1000 / len(images), passes


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
        chunk(images, classifier, overlap=False)  # warm up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for overlap in (False, True):
                ms, passes = chunk(images, classifier, overlap)
                times[overlap].append(ms)
                if overlap:
                    print(f"overlapped_passes: {passes}")
    for overlap, name in ((False, "one_pass"), (True, "overlapped")):
        print(f"{name}_ms_per_image: {statistics.median(times[overlap]):.1f}")
        print(f"{name}_ms_per_image_all: {[round(ms, 1) for ms in times[overlap]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
