"""Does overlapping a chunk's preprocessing with the model pay on this machine?

A chunk of ``--chunk-size`` synthetic camera photographs (bench/time_split.py's, 3504 x 2336
JPEG by default) goes through the worker's own ``preprocess`` and ``classify`` with the tiny
model, alternately in one pass once all are prepared (what a worker does with its model on
the CPU) and overlapped (the model on each batch of images ready, in order, while the pool
prepares the next: what a worker does with its model on a GPU). Wall-clock ms per image,
the median of ``--rounds`` chunks each: the whole chunk, the model's passes, and the
preprocessing left exposed (the chunk's time outside the model), with the passes the overlap
made. On the CPU the model and the pool share the cores and the GIL: overlapped, little
preprocessing is exposed, but the model's passes take longer. bench/gpu.py runs the same
comparison with the 11B model on a GPU.

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
    images: list[ClaimedImage], classifier: Classifier, overlap: bool
) -> tuple[float, float, list[int]]:
    """Wall-clock ms per image of one chunk, preprocessing and model, the model's share of
    it (its passes' ms per image) and its passes."""
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
        began = time.perf_counter()
        classify(classifier, [item for item in ready if item.input is not None], max_new_tokens=16)
        model_s += time.perf_counter() - began
        passes.append(len(ready))
    elapsed_s = time.perf_counter() - start
    return elapsed_s * 1000 / len(images), model_s * 1000 / len(images), passes


def compare(classifier: Classifier, images: list[ClaimedImage], rounds: int) -> dict[str, str]:
    """``name: value`` pairs, medians over ``rounds`` chunks of each way in ms per image: the
    whole chunk, the model's passes, and what is left exposed of preprocessing (the chunk's
    time outside the model) with its share of the chunk; and the overlap's passes."""
    chunk(images, classifier, overlap=False)  # warm up
    results: dict[str, str] = {}
    for overlap, name in ((False, "one_pass"), (True, "overlapped")):
        runs = [chunk(images, classifier, overlap) for _ in range(rounds)]
        total = statistics.median(ms for ms, _, _ in runs)
        exposed = statistics.median(ms - model for ms, model, _ in runs)
        model = statistics.median(model for _, model, _ in runs)
        results[f"{name}_ms_per_image"] = f"{total:.1f}"
        results[f"{name}_model_ms_per_image"] = f"{model:.1f}"
        results[f"{name}_exposed_preprocessing_ms_per_image"] = f"{exposed:.1f}"
        results[f"{name}_exposed_preprocessing_share"] = f"{exposed / total:.3f}"
    results["overlapped_passes"] = str([passes for _, _, passes in runs])
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
