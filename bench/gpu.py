"""The 11B model on one GPU in one command (under 8 minutes on an H100): load, label scoring
throughput and a training step, with a randomly initialised model.

The ``llama-3.2-11b-vision`` preset's real architecture is built directly on the GPU in
bfloat16 (`MDFModel.from_config`: nothing is downloaded, no weights are read), with the offline
tokenizer (its prompt has a few more tokens than Llama's; the FLOP figures use the counts it
gives). Random weights cost what trained ones cost: the same matrix products.

Printed as ``name: value`` lines:

- the device and its bfloat16 dense peak (from the device name; unknown devices print none);
- load time and GPU memory of the weights;
- label scoring (one packed forward pass per batch, no text, no mask) in images/s at batch
  1, 8 and 32, with ``vision_tiles`` 1 (the preset) and 4 (the released model's behaviour), each
  with its TFLOP/s (analytic FLOPs per image, mdf_model.flops, times images/s) and the fraction
  of the peak that is;
- the worker's whole path (scores, masks, 16 text tokens) at batch 8 with one tile;
- a worker's chunk of ``--chunk-images`` camera photographs (3504 x 2336 JPEG, bench/overlap.py):
  read, decode, gradability and preparation in the worker's pool, the whole chunk prepared
  first, overlapped with the model, and two chunks in flight taking turns on it: ms per image,
  the model's share, and the preprocessing left exposed (``--chunk-images 0`` skips it);
- one training step (AdamW) of the ``cross_attention`` strategy at batch 4: seconds and peak
  memory.

Without CUDA it stops with a message and exit status 2. ``--preset tiny --device cpu`` runs the
same code on the tiny preset, on the CPU and in float32, to know that it runs (the numbers mean
nothing).

    python bench/gpu.py [--preset llama-3.2-11b-vision] [--device cuda]
                        [--batch-sizes 1,8,32] [--tiles 1,4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from overlap import claimed, compare  # bench/overlap.py, beside this file
from time_split import write_photographs

from mdf_model import PRESETS, Classifier, MDFConfig, MDFModel, PreparedInput
from mdf_model.flops import estimate_flops
from mdf_model.tiny import build_offline_processor
from training.trainer import apply_strategy

GIB = 1024**3
# bfloat16 dense peaks (no sparsity), by the marketing name inside torch's device name; the
# first that matches counts, so the variants come before the plain name.
BF16_DENSE_PEAK = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)
TRAIN_BATCH = 4
WORKER_BATCH = 8


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in BF16_DENSE_PEAK if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fundus(count: int, size: int = 512, seed: int = 0) -> list[np.ndarray]:
    """Orange discs on black with noise: the shape of a fundus photograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    images = []
    for _ in range(count):
        image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image[disc] += np.array([160, 60, 20], dtype=np.uint8)
        images.append(image)
    return images


def with_tiles(model: MDFModel, tiles: int) -> Classifier:
    """The same weights computing ``tiles`` vision tiles (see mdf_model.tiles): a new
    configuration and a processor that fits photographs onto that many tiles."""
    model.config = model.config.replace(vision_tiles=tiles)
    model.processor = build_offline_processor(model.config, model.config.labels)
    return Classifier(model)


def seconds_per_call(device: torch.device, work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: kernels chosen, memory pools grown
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def scoring_flops(classifier: Classifier, item: PreparedInput) -> float:
    config = classifier.model.config
    return estimate_flops(
        config,
        prompt_tokens=len(item.prompt_ids),
        answer_tokens=[len(a) for a in classifier.answer_token_ids],
        segment=False,
    ).total


def report(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def score(
    classifier: Classifier,
    prepared: Sequence[PreparedInput],
    batch_sizes: Sequence[int],
    device: torch.device,
    peak: float | None,
) -> None:
    tiles = classifier.model.config.vision_tiles
    flops = scoring_flops(classifier, prepared[0])
    report(f"scoring_tflop_per_image_tiles_{tiles}", f"{flops / 1e12:.4g}")
    for size in batch_sizes:
        batch = list(prepared[:size])
        key = f"tiles_{tiles}_batch_{size}"
        try:
            seconds = seconds_per_call(
                device,
                lambda batch=batch: classifier.classify_prepared(
                    batch, generate_text=False, segment=False
                ),
                repeats=max(2, 32 // size),
            )
        except torch.OutOfMemoryError:
            report(f"scoring_images_per_s_{key}", "out of memory")
            torch.cuda.empty_cache()
            continue
        rate = size / seconds
        report(f"scoring_images_per_s_{key}", f"{rate:.2f}")
        report(f"scoring_tflops_{key}", f"{rate * flops / 1e12:.4g}")
        if peak is not None:
            report(f"scoring_peak_fraction_{key}", f"{rate * flops / peak:.3f}")


def chunk_split(classifier: Classifier, count: int) -> None:
    """A worker's chunk of camera photographs, overlapped with the model and in one pass."""
    with tempfile.TemporaryDirectory(prefix="mdf-gpu-") as folder:
        images = claimed(write_photographs(Path(folder), "3504x2336-jpeg", count))
        for name, value in compare(classifier, images, rounds=2).items():
            report(f"chunk_{name}", value)


def train_step(classifier: Classifier, prepared: Sequence[PreparedInput]) -> float:
    """One AdamW step of the cross_attention strategy; returns its seconds."""
    model = classifier.model
    apply_strategy(model, "cross_attention")
    optimizer = torch.optim.AdamW(model.parameter_groups({"default": 1e-5}))
    labels = classifier.labels
    targets = [labels[i % len(labels)] for i in range(len(prepared))]
    inputs = classifier.training_inputs(prepared, targets)
    model.train()
    synchronize(model.device)
    start = time.perf_counter()
    with torch.autocast(model.device.type, dtype=torch.bfloat16):
        loss = model(inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(model.device)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-3.2-11b-vision")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--tiles", default="1,4", help="vision_tiles values to score with")
    parser.add_argument("--chunk-images", type=int, default=16, help="a worker's chunk")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device: bench/gpu.py measures a GPU "
            "(--preset tiny --device cpu only checks that it runs)",
            file=sys.stderr,
        )
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    began = time.perf_counter()
    name, peak = peak_flops(device)
    report("device", name)
    report("peak_bf16_dense_tflops", "unknown" if peak is None else f"{peak / 1e12:.0f}")

    config = MDFConfig.from_preset(args.preset)
    # bfloat16 is what a GPU serves in; the CPU check runs in float32, which CPUs compute fast.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report("dtype", dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = MDFModel.from_config(config, device=device, dtype=dtype).eval()
    synchronize(device)
    report("load_s", f"{time.perf_counter() - start:.1f}")
    report("parameters", model.parameter_counts()["total"])
    report("weights_gib", f"{sum(p.nbytes for p in model.parameters()) / GIB:.2f}")
    if device.type == "cuda":
        report("gpu_memory_after_load_gib", f"{torch.cuda.memory_allocated(device) / GIB:.2f}")

    images = fundus(max([*batch_sizes, TRAIN_BATCH, WORKER_BATCH]))
    for tiles in (int(t) for t in args.tiles.split(",")):
        classifier = with_tiles(model, tiles)
        prepared = [classifier.prepare(image) for image in images]
        report(f"prompt_tokens_tiles_{tiles}", len(prepared[0].prompt_ids))
        score(classifier, prepared, batch_sizes, device, peak)

    classifier = with_tiles(model, config.vision_tiles)
    prepared = [classifier.prepare(image) for image in images]
    worker = prepared[:WORKER_BATCH]
    seconds = seconds_per_call(
        device, lambda: classifier.classify_prepared(worker, max_new_tokens=16), repeats=2
    )
    report(f"worker_path_images_per_s_batch_{WORKER_BATCH}", f"{WORKER_BATCH / seconds:.2f}")
    if device.type == "cuda":
        report("gpu_peak_memory_inference_gib", f"{torch.cuda.max_memory_allocated() / GIB:.2f}")
        torch.cuda.reset_peak_memory_stats(device)
    if args.chunk_images:
        chunk_split(classifier, args.chunk_images)

    try:
        seconds = train_step(classifier, prepared[:TRAIN_BATCH])
        report(f"train_step_s_cross_attention_batch_{TRAIN_BATCH}", f"{seconds:.2f}")
    except torch.OutOfMemoryError:
        report(f"train_step_s_cross_attention_batch_{TRAIN_BATCH}", "out of memory")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report("train_trainable_parameters", trainable)
    if device.type == "cuda":
        report("gpu_peak_memory_train_gib", f"{torch.cuda.max_memory_allocated() / GIB:.2f}")
    report("total_s", f"{time.perf_counter() - began:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
