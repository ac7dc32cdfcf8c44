"""Throughput of MDF-MLLM classification: per-image generate() vs batched label scoring.

(a) naive: one image at a time, the way a plain transformers user classifies: prepare the
    image, ``generate()`` an answer (greedy, ``--max-new-tokens``), decode it, look for a label.
(b) batched: prepare all images, then ``classify_prepared`` in batches with label scoring only
    (one teacher-forced forward pass per batch, every label's answer scored, no generation, no
    mask: like (a), a label and nothing else). The best batch size is measured again with masks,
    which is what the workers compute.
Both include the per-image preparation (validation, the processor's tiles, the U-Net image).

What batching cannot remove: both paths prepare every image and run the ResNet50 encoder on it
once, and on a CPU a convolution costs the same per image at any batch size. Those two costs are
measured on their own at the best batch size, and ``speedup_ceiling`` = (a)'s time per image over
their sum is the most any batching of the rest could give here.

Peak memory is the process's resident-set high-water mark (VmHWM of /proc/self/status, reset
through /proc/self/clear_refs before each measurement) on the CPU, and
``torch.cuda.max_memory_allocated`` on a GPU.

The tiny preset runs from a real tiny checkpoint. Other presets are built with random weights
directly on the device (``MDFModel.from_config``, bfloat16 on a GPU: nothing is downloaded) with
the offline tokenizer, so their prompts have other token counts than with the real tokenizer.

Also printed: the FLOPs of label scoring for one 512x512 fundus image with the 11B preset,
computed analytically from the configuration (mdf_model.flops), and the images/s a GPU
delivering 800 TFLOP/s in bfloat16 could reach if compute were the only limit. The processor
pads every image to the model's four 560 px tiles and the vision tower computes all of them,
so the estimate is also given for a one-tile vision tower.

The output ends with ``name: value`` lines for machines.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdf_model import PRESETS, Classifier, MDFConfig, MDFModel, PreparedInput, load_classifier
from mdf_model.flops import FlopEstimate, estimate_flops
from mdf_model.prompt import label_in_text
from mdf_model.tiny import build_offline_processor, build_tiny_checkpoint

GPU_BF16_FLOPS = 800e12
BIG_PRESET = "llama-3.2-11b-vision"


@dataclass
class Measurement:
    mode: str
    tiles: str
    batch_size: int
    images: int
    seconds: float
    peak_bytes: int | None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _rss_high_water() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


@contextlib.contextmanager
def peak_memory(device: torch.device, result: list[int | None]) -> Iterator[None]:
    """Append the peak memory of the block (bytes) to ``result``; None if not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        torch.cuda.synchronize(device)
        result.append(torch.cuda.max_memory_allocated(device))
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        yield
        result.append(None)
        return
    yield
    result.append(_rss_high_water())


def synthetic_fundus(count: int, size: int = 512, seed: int = 0) -> list[np.ndarray]:
    """Orange discs on black with noise: the shape of a fundus photograph, nothing more."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    images = []
    for _ in range(count):
        image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image[disc] += np.array([160, 60, 20], dtype=np.uint8)
        images.append(image)
    return images


def one_tile(config: MDFConfig) -> MDFConfig:
    vision = {**config.vision_config, "max_num_tiles": 1, "supported_aspect_ratios": [[1, 1]]}
    return config.replace(base_config={**config.base_config, "vision_config": vision})


def unet_size_changes(preset: str, size: int | None) -> dict[str, int]:
    """Configuration changes for another U-Net input size (the patch pool shrinks to fit)."""
    if size is None:
        return {}
    config = PRESETS[preset]
    deepest = size // 2 ** max(config.skip_levels)
    return {"unet_input_size": size, "patch_pool": max(1, deepest // config.patch_grid)}


def build_classifier(
    preset: str, tiles: str, device: torch.device, scratch: Path, changes: dict[str, int]
) -> tuple[Classifier, str]:
    if preset == "tiny" and tiles == "default":
        checkpoint = build_tiny_checkpoint(scratch / "tiny", seed=0, **changes)
        return load_classifier(checkpoint, device=str(device)), "tiny checkpoint"
    config = MDFConfig.from_preset(preset, **changes)
    if tiles == "1":
        config = one_tile(config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = MDFModel.from_config(config, device=device, dtype=dtype).eval()
    model.processor = build_offline_processor(config, config.labels)
    return Classifier(model), f"random weights, {dtype}"


def _timed(device: torch.device, work: Callable[[], None]) -> tuple[float, int | None]:
    peaks: list[int | None] = []
    with peak_memory(device, peaks):
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, peaks[0]


def naive(
    classifier: Classifier, images: Sequence[np.ndarray], max_new_tokens: int
) -> list[str | None]:
    """(a): one generate() per image, its text searched for a label."""
    labels = []
    tokenizer = classifier.processor.tokenizer
    for image in images:
        inputs = classifier.generation_inputs([classifier.prepare(image)])
        with torch.inference_mode():
            sequences = classifier.model.generate(inputs, max_new_tokens=max_new_tokens)
        text = tokenizer.decode(sequences[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        labels.append(label_in_text(text, classifier.labels))
    return labels


def batched(
    classifier: Classifier, images: Sequence[np.ndarray], batch_size: int, segment: bool = False
) -> None:
    """(b): prepare everything, then label scoring in batches."""
    prepared: list[PreparedInput] = [classifier.prepare(image) for image in images]
    for start in range(0, len(prepared), batch_size):
        classifier.classify_prepared(
            prepared[start : start + batch_size], generate_text=False, segment=segment
        )


def per_image_floor(
    classifier: Classifier, images: Sequence[np.ndarray], batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Seconds per image of the two costs batching cannot share: preparation, and the U-Net
    encoder up to the deepest skip level (what (a) and (b) both run)."""
    start = time.perf_counter()
    prepared = [classifier.prepare(image) for image in images]
    prepare_s = (time.perf_counter() - start) / len(images)
    model = classifier.model
    if model.unet is None:
        return prepare_s, 0.0
    dtype = next(model.unet.parameters()).dtype

    def encode() -> None:
        with torch.inference_mode():
            for first in range(0, len(prepared), batch_size):
                pixels = torch.stack([p.unet_pixels for p in prepared[first : first + batch_size]])
                model.unet.encode(pixels.to(device, dtype), for_decoder=False)

    encode()  # warm-up
    seconds, _ = _timed(device, encode)
    return prepare_s, seconds / len(images)


def measure(
    classifier: Classifier,
    tiles: str,
    images: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    naive_images: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[Measurement]:
    naive(classifier, images[:1], max_new_tokens)  # warm-up: first-call costs are not throughput
    batched(classifier, images[:1], 1)
    seconds, peak = _timed(device, lambda: naive(classifier, images[:naive_images], max_new_tokens))
    results = [Measurement("naive generate", tiles, 1, naive_images, seconds, peak)]
    for size in batch_sizes:
        try:
            seconds, peak = _timed(device, lambda size=size: batched(classifier, images, size))
        except torch.OutOfMemoryError:
            print(f"batch size {size}: out of memory", file=sys.stderr)
            torch.cuda.empty_cache()
            break
        results.append(Measurement("batched scoring", tiles, size, len(images), seconds, peak))
    best = max(results[1:], key=lambda m: m.images_per_s)
    seconds, peak = _timed(device, lambda: batched(classifier, images, best.batch_size, True))
    results.append(
        Measurement("scoring + masks", tiles, best.batch_size, len(images), seconds, peak)
    )
    return results


def print_measurements(results: Sequence[Measurement], naive_rate: dict[str, float]) -> None:
    print(
        f"{'mode':<16} {'tiles':>7} {'batch':>5} {'images':>6} {'images/s':>9} "
        f"{'ms/image':>9} {'peak MiB':>9} {'vs naive':>8}"
    )
    for m in results:
        peak = "n/a" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.0f}"
        ratio = m.images_per_s / naive_rate[m.tiles]
        print(
            f"{m.mode:<16} {m.tiles:>7} {m.batch_size:>5} {m.images:>6} "
            f"{m.images_per_s:>9.2f} {1000 / m.images_per_s:>9.1f} {peak:>9} {ratio:>7.1f}x"
        )


def print_flops(name: str, estimate: FlopEstimate) -> None:
    print(
        f"  {name}: {estimate.total / 1e12:.2f} TFLOP per image "
        f"(vision tower {estimate.vision_tower / 1e12:.2f}, projector "
        f"{estimate.projector / 1e12:.2f}, text {estimate.text / 1e12:.2f} for "
        f"{estimate.rows} rows of {estimate.row_tokens} tokens, U-Net "
        f"{estimate.unet / 1e12:.3f}, fusion {estimate.fusion / 1e12:.3f}); "
        f"FLOP-bound {GPU_BF16_FLOPS / estimate.total:.1f} images/s at 800 TFLOP/s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--images", type=int, default=32, help="images per measurement")
    parser.add_argument("--naive-images", type=int, help="images for (a) (default: --images)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--tiles",
        help="comma-separated vision tiles to measure: 'default' (the processor's) and/or '1' "
        "(default: 'default,1' on a GPU, 'default' elsewhere)",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=96,
        help="prompt length in Llama tokens for the 11B FLOP estimate",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: on shared CPUs more threads stall each other)",
    )
    parser.add_argument("--unet-size", type=int, help="U-Net input size (default: the preset's)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tiles = (args.tiles or ("default,1" if device.type == "cuda" else "default")).split(",")
    images = synthetic_fundus(args.images)
    naive_images = min(args.naive_images or args.images, args.images)

    print(
        f"preset {args.preset} on {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f" ({torch.get_num_threads()} threads)"
        )
    )
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as scratch:
        for tile in tiles:
            classifier, source = build_classifier(
                args.preset,
                tile,
                device,
                Path(scratch),
                unet_size_changes(args.preset, args.unet_size),
            )
            prompt_tokens = len(classifier.prepare(images[0]).prompt_ids)
            config = classifier.model.config
            print(
                f"tiles {tile}: {source}, {classifier.model.parameter_counts()['total'] / 1e6:.1f}"
                f" M parameters, U-Net input {config.unet_input_size}, prompt {prompt_tokens}"
                f" tokens, labels {list(config.labels)}"
            )
            measured = measure(
                classifier, tile, images, batch_sizes, naive_images, args.max_new_tokens, device
            )
            results += measured
            if tile == tiles[0]:
                floor = per_image_floor(classifier, images, measured[-1].batch_size, device)
            del classifier
            if device.type == "cuda":
                torch.cuda.empty_cache()

    naive_rate = {m.tiles: m.images_per_s for m in results if m.mode == "naive generate"}
    print()
    print_measurements(results, naive_rate)
    default_batched = [m for m in results if m.mode == "batched scoring" and m.tiles == tiles[0]]
    best = max(default_batched, key=lambda m: m.images_per_s)
    speedup = best.images_per_s / naive_rate[tiles[0]]
    prepare_s, encoder_s = floor
    ceiling = (1 / naive_rate[tiles[0]]) / (prepare_s + encoder_s)
    print(
        f"\nbatched scoring (b) / naive generate (a): {speedup:.1f}x at batch size "
        f"{best.batch_size} (goal: at least 10x)"
    )
    print(
        f"per image at batch size {best.batch_size}, paid by (a) and (b) alike: preparation "
        f"{prepare_s * 1000:.1f} ms, U-Net encoder {encoder_s * 1000:.1f} ms; (a) takes "
        f"{1000 / naive_rate[tiles[0]]:.1f} ms, so no batching of the rest can exceed "
        f"{ceiling:.1f}x here"
    )

    big = PRESETS[BIG_PRESET]
    default_flops = estimate_flops(big, prompt_tokens=args.prompt_tokens)
    one_tile_flops = estimate_flops(one_tile(big), prompt_tokens=args.prompt_tokens)
    print(
        f"\n{BIG_PRESET}, label scoring of one 512x512 fundus image "
        f"({args.prompt_tokens}-token prompt, {len(big.labels)} labels): the processor uses "
        f"{default_flops.tiles_used} of the {default_flops.tiles_computed} 560 px tiles it "
        "computes"
    )
    print_flops(f"{default_flops.tiles_computed} tiles (processor default)", default_flops)
    print_flops("1 tile", one_tile_flops)

    memory = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_high_water_mark"
    print()
    print(f"naive_images_per_s: {naive_rate[tiles[0]]:.3f}")
    print(f"batched_images_per_s: {best.images_per_s:.3f}")
    print(f"best_batch_size: {best.batch_size}")
    print(f"speedup: {speedup:.2f}")
    print(f"speedup_ceiling: {ceiling:.2f}")
    print(f"prepare_ms_per_image: {prepare_s * 1000:.2f}")
    print(f"unet_encoder_ms_per_image: {encoder_s * 1000:.2f}")
    print(f"memory_measure: {memory}")
    print(f"peak_memory_bytes_best: {best.peak_bytes}")
    print(f"flops_per_image: {default_flops.total:.4g}")
    print(f"flops_per_image_one_tile: {one_tile_flops.total:.4g}")
    print(f"flop_bound_images_per_s: {GPU_BF16_FLOPS / default_flops.total:.2f}")
    print(f"flop_bound_images_per_s_one_tile: {GPU_BF16_FLOPS / one_tile_flops.total:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
