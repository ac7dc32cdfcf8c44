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

FLOPs of label scoring (no text, no mask) are counted as executed, with torch's FLOP counter
(attention on the math kernel, whose matrix products it sees), over a batch of photographs that
fill one vision tile as a 512 px photograph fills the 11B preset's 560 px tile (102 px for the
tiny preset's 112 px tiles; the throughput images are larger and use the whole canvas). Beside
them: the same batch in the per-label reference layout (the prompt once per label), and the
floor (mdf_model.flops.floor_flops: the vision tower on the used tile, the prompt once, each
label's answer, the U-Net encoder once). ``flops_ratio`` = counted / floor.

Also printed: the FLOPs of label scoring for one 512x512 fundus photograph with the 11B presets
(one vision tile, and the released model's four), computed analytically from the configuration,
and the images/s a GPU delivering 800 TFLOP/s in bfloat16 could reach if compute were the only
limit.

The output ends with ``name: value`` lines for machines.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mdf_model import PRESETS, Classifier, MDFConfig, MDFModel, PreparedInput, load_classifier
from mdf_model.flops import FlopEstimate, estimate_flops, floor_flops
from mdf_model.prompt import label_in_text
from mdf_model.tiny import build_offline_processor, build_tiny_checkpoint

GPU_BF16_FLOPS = 800e12
BIG_PRESET = "llama-3.2-11b-vision"
BIG_PRESET_4_TILES = "llama-3.2-11b-vision-4-tiles"
FLOP_BATCH = 4


@dataclass
class Measurement:
    mode: str
    tiles: int
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


def unet_size_changes(preset: str, size: int | None) -> dict[str, int]:
    """Configuration changes for another U-Net input size (the patch pool shrinks to fit)."""
    if size is None:
        return {}
    config = PRESETS[preset]
    deepest = size // 2 ** max(config.skip_levels)
    return {"unet_input_size": size, "patch_pool": max(1, deepest // config.patch_grid)}


def build_classifier(
    preset: str, tiles: int | None, device: torch.device, scratch: Path, changes: dict[str, int]
) -> tuple[Classifier, str]:
    """The preset with ``tiles`` vision tiles (None: the preset's own)."""
    if tiles is not None:
        changes = {**changes, "vision_tiles": tiles}
    if preset == "tiny":
        checkpoint = build_tiny_checkpoint(scratch / f"tiny-{tiles}", seed=0, **changes)
        return load_classifier(checkpoint, device=str(device)), "tiny checkpoint"
    config = MDFConfig.from_preset(preset, **changes)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = MDFModel.from_config(config, device=device, dtype=dtype).eval()
    model.processor = build_offline_processor(config, config.labels)
    return Classifier(model), f"random weights, {dtype}"


@dataclass(frozen=True)
class FlopCount:
    """Per image: label scoring counted as executed (packed, and in the per-label reference
    layout) and its floor."""

    tiles: int
    packed: float
    per_label_rows: float
    analytic: float
    floor: float

    @property
    def ratio(self) -> float:
        return self.packed / self.floor


def count_flops(classifier: Classifier) -> FlopCount:
    config = classifier.model.config
    side = round(512 * config.vision_config["image_size"] / 560)
    batch = [classifier.prepare(image) for image in synthetic_fundus(FLOP_BATCH, size=side)]

    def counted(inputs) -> float:
        with (
            torch.inference_mode(),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            classifier.model.score(inputs, segment=False)
        return counter.get_total_flops() / len(batch)

    sizes = {
        "image_height": side,
        "image_width": side,
        "prompt_tokens": len(batch[0].prompt_ids),
        "answer_tokens": [len(a) for a in classifier.answer_token_ids],
    }
    return FlopCount(
        tiles=config.vision_tiles,
        packed=counted(classifier.packed_scoring_inputs(batch)),
        per_label_rows=counted(classifier.scoring_inputs(batch)),
        analytic=estimate_flops(config, segment=False, **sizes).total,
        floor=floor_flops(config, **sizes).total,
    )


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
) -> tuple[float, float, float]:
    """Seconds per image of the two costs batching cannot share: preparation, and the U-Net
    encoder up to the deepest skip level (what (a) and (b) both run); the encoder in the
    model's channels-last layout and, for comparison, in the contiguous one (best of three,
    interleaved)."""
    start = time.perf_counter()
    prepared = [classifier.prepare(image) for image in images]
    prepare_s = (time.perf_counter() - start) / len(images)
    model = classifier.model
    if model.unet is None:
        return prepare_s, 0.0, 0.0
    dtype = next(model.unet.parameters()).dtype
    contiguous = copy.deepcopy(model.unet).use_memory_format(torch.contiguous_format)

    def encode(unet: torch.nn.Module) -> None:
        with torch.inference_mode():
            for first in range(0, len(prepared), batch_size):
                pixels = torch.stack([p.unet_pixels for p in prepared[first : first + batch_size]])
                unet.encode(pixels.to(device, dtype), for_decoder=False)

    best = {model.unet: float("inf"), contiguous: float("inf")}
    for _ in range(3):
        for unet in best:
            encode(unet)  # warm-up
            best[unet] = min(best[unet], _timed(device, lambda unet=unet: encode(unet))[0])
    return prepare_s, best[model.unet] / len(images), best[contiguous] / len(images)


def measure(
    classifier: Classifier,
    tiles: int,
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


def print_flop_counts(counts: Sequence[FlopCount]) -> None:
    print(
        f"{'vision tiles':>12} {'counted':>10} {'analytic':>10} {'per-label rows':>14} "
        f"{'floor':>10} {'ratio':>6}   (MFLOP per image, label scoring without masks)"
    )
    for c in counts:
        print(
            f"{c.tiles:>12} {c.packed / 1e6:>10.1f} {c.analytic / 1e6:>10.1f} "
            f"{c.per_label_rows / 1e6:>14.1f} {c.floor / 1e6:>10.1f} {c.ratio:>6.3f}"
        )


def print_flops(name: str, estimate: FlopEstimate) -> None:
    print(
        f"  {name}: {estimate.total / 1e12:.2f} TFLOP per image "
        f"(vision tower {estimate.vision_tower / 1e12:.2f}, projector "
        f"{estimate.projector / 1e12:.2f}, text {estimate.text / 1e12:.2f} for one row of "
        f"{estimate.row_tokens} tokens, U-Net {estimate.unet / 1e12:.3f}, fusion "
        f"{estimate.fusion / 1e12:.3f}); FLOP-bound {GPU_BF16_FLOPS / estimate.total:.1f} "
        "images/s at 800 TFLOP/s"
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
        help="comma-separated vision_tiles values to measure (default: the preset's own; "
        "'1,4' on a GPU)",
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
    tiles_arg = args.tiles or ("1,4" if device.type == "cuda" else None)
    tiles = [None] if tiles_arg is None else [int(t) for t in tiles_arg.split(",")]
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
    counts: list[FlopCount] = []
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
                f"vision_tiles {config.vision_tiles}: {source}, "
                f"{classifier.model.parameter_counts()['total'] / 1e6:.1f} M parameters, U-Net "
                f"input {config.unet_input_size}, prompt {prompt_tokens} tokens, labels "
                f"{list(config.labels)}"
            )
            counts.append(count_flops(classifier))
            measured = measure(
                classifier,
                config.vision_tiles,
                images,
                batch_sizes,
                naive_images,
                args.max_new_tokens,
                device,
            )
            results += measured
            if tile == tiles[0]:
                floor = per_image_floor(classifier, images, measured[-1].batch_size, device)
            del classifier
            if device.type == "cuda":
                torch.cuda.empty_cache()

    first = counts[0].tiles
    naive_rate = {m.tiles: m.images_per_s for m in results if m.mode == "naive generate"}
    print()
    print_measurements(results, naive_rate)
    default_batched = [m for m in results if m.mode == "batched scoring" and m.tiles == first]
    best = max(default_batched, key=lambda m: m.images_per_s)
    speedup = best.images_per_s / naive_rate[first]
    prepare_s, encoder_s, contiguous_s = floor
    ceiling = (1 / naive_rate[first]) / (prepare_s + encoder_s)
    print(
        f"\nbatched scoring (b) / naive generate (a): {speedup:.1f}x at batch size "
        f"{best.batch_size} (goal: at least 10x)"
    )
    print(
        f"per image at batch size {best.batch_size}, paid by (a) and (b) alike: preparation "
        f"{prepare_s * 1000:.1f} ms, U-Net encoder {encoder_s * 1000:.1f} ms; (a) takes "
        f"{1000 / naive_rate[first]:.1f} ms, so no batching of the rest can exceed "
        f"{ceiling:.1f}x here"
    )

    print()
    print_flop_counts(counts)

    big = estimate_flops(PRESETS[BIG_PRESET], prompt_tokens=args.prompt_tokens)
    big_4 = estimate_flops(PRESETS[BIG_PRESET_4_TILES], prompt_tokens=args.prompt_tokens)
    print(
        f"\nlabel scoring with masks of one 512x512 fundus photograph "
        f"({args.prompt_tokens}-token prompt, {len(PRESETS[BIG_PRESET].labels)} labels), which "
        f"uses {big.tiles_used} 560 px tile:"
    )
    print_flops(f"{BIG_PRESET} ({big.tiles_computed} tile computed)", big)
    print_flops(f"{BIG_PRESET_4_TILES} ({big_4.tiles_computed} tiles computed)", big_4)

    memory = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_high_water_mark"
    print()
    print(f"naive_images_per_s: {naive_rate[first]:.3f}")
    print(f"batched_images_per_s: {best.images_per_s:.3f}")
    print(f"best_batch_size: {best.batch_size}")
    print(f"speedup: {speedup:.2f}")
    print(f"speedup_ceiling: {ceiling:.2f}")
    print(f"prepare_ms_per_image: {prepare_s * 1000:.2f}")
    print(f"unet_encoder_ms_per_image: {encoder_s * 1000:.2f}")
    print(f"unet_encoder_ms_per_image_contiguous: {contiguous_s * 1000:.2f}")
    print(f"memory_measure: {memory}")
    print(f"peak_memory_bytes_best: {best.peak_bytes}")
    print(f"vision_tiles: {counts[0].tiles}")
    print(f"flops_per_image: {counts[0].packed:.4g}")
    print(f"flops_per_image_per_label_rows: {counts[0].per_label_rows:.4g}")
    print(f"flops_analytic_per_image: {counts[0].analytic:.4g}")
    print(f"flops_floor_per_image: {counts[0].floor:.4g}")
    print(f"flops_ratio: {counts[0].ratio:.3f}")
    for count in counts[1:]:
        print(f"flops_ratio_{count.tiles}_tiles: {count.ratio:.3f}")
    print(f"scoring_flops_per_512px_image_11b: {big.total:.4g}")
    print(f"scoring_flops_per_512px_image_11b_4_tiles: {big_4.total:.4g}")
    print(f"flop_bound_images_per_s_11b: {GPU_BF16_FLOPS / big.total:.2f}")
    print(f"flop_bound_images_per_s_11b_4_tiles: {GPU_BF16_FLOPS / big_4.total:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
