"""The U-Net's vessel segmentation on real photographs: F1 and AUROC at the source resolution.

DIR holds ``images/`` and ``vessels/`` (binary masks) with matching file stems; the default
is the 20 STARE photographs (700x605) in ../shared/data/stare. The images are split with a
fixed seed; the model's own U-Net (``FundusUNet`` with the preset's decoder, input side and
segmentation channels; the encoder from the preset's weight file, or random where it names
none) learns from the training images with the recipe of training/vessels.py, as `mdf train`
does when masks exist. Each held-out photograph is segmented whole, as a worker does: the
letterboxed square, then its vessel channel scaled back to the photograph's own pixels by
``mdf.imaging.masks.to_source``. F1 (at probability 0.5) and AUROC count every pixel of every
held-out photograph (STARE has no field-of-view masks, so the dark surround counts too).

    python bench/vessels.py [--data DIR] [--minutes 18] [--steps 100000] [--held-out 5]

The wall time counts loading, training and scoring; ``cpu_s`` is this process's CPU time
(every thread) and ``load_average`` the machine's 1-minute load at start and end: on a
shared machine the wall time depends on what else runs. One torch thread is the default:
with the machine's two cores shared by other jobs (load average 8), ten steps took 9 s on
one thread and 58 s on two, whose OpenMP threads wait for each other whenever one of them
is descheduled (21 s with OMP_WAIT_POLICY=PASSIVE); on an idle machine pass --threads 2.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mdf.imaging.masks import to_source
from mdf_model.presets import PRESETS
from mdf_model.unet import FundusUNet
from training.config import VesselStage
from training.vessels import fit_unet, predict, seg_example, vessel_scores

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stare"


def load_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, RGB uint8, mask bool) for every image with a mask of the same size."""
    pairs = []
    for path in sorted((data / "images").iterdir()):
        masks = list((data / "vessels").glob(f"{path.stem}.*"))
        if len(masks) != 1:
            print(f"skipped {path.name}: {len(masks)} vessel masks named {path.stem}.*")
            continue
        image = np.asarray(Image.open(path).convert("RGB"))
        mask = np.asarray(Image.open(masks[0]).convert("L")) > 127
        if mask.shape != image.shape[:2]:
            print(f"skipped {path.name}: mask {mask.shape} against image {image.shape[:2]}")
            continue
        pairs.append((path.stem, image, mask))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="llama-3.2-11b-vision", choices=sorted(PRESETS))
    parser.add_argument("--held-out", type=int, default=5, help="images scored, not trained")
    parser.add_argument("--minutes", type=float, default=18.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=100_000, help="training step budget")
    parser.add_argument("--patch", type=int, default=VesselStage().patch)
    parser.add_argument("--batch", type=int, default=VesselStage().batch)
    parser.add_argument("--lr", type=float, default=VesselStage().learning_rate)
    parser.add_argument("--bf16", type=int, choices=(0, 1), default=int(VesselStage().bf16))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (see the docstring)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()[0]
    began, cpu_began = time.perf_counter(), time.process_time()

    pairs = load_pairs(args.data)
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    held_out = [pairs[i] for i in sorted(order[: args.held_out])]
    train = [pairs[i] for i in sorted(order[args.held_out :])]
    print("held out:", " ".join(stem for stem, _, _ in held_out))

    config = PRESETS[args.preset]
    size, channels = config.unet_input_size, len(config.seg_classes)
    weights = Path(config.unet_encoder_weights) if config.unet_encoder_weights else None
    unet = FundusUNet(
        classes=channels,
        decoder_channels=config.unet_decoder_channels,
        skip_levels=config.skip_levels,
        encoder=config.unet_encoder,
        encoder_weights=weights,
    )
    stage = VesselStage(
        steps=args.steps,
        patch=args.patch,
        batch=args.batch,
        learning_rate=args.lr,
        bf16=bool(args.bf16),
    )
    examples = [seg_example(image, mask, size, channels) for _, image, mask in train]

    def report(step: int, loss: float) -> None:
        if step % 20 == 0:
            print(f"step {step}: loss {loss:.4f}  {time.perf_counter() - began:.0f} s", flush=True)

    trained = time.perf_counter()
    steps = fit_unet(
        unet, examples, stage, seed=args.seed, seconds=args.minutes * 60, report=report
    )
    train_s = time.perf_counter() - trained

    scored = time.perf_counter()
    vessel = config.seg_classes.index("vessels")
    probabilities, truths = [], []
    for _, image, mask in held_out:
        pixels = seg_example(image, mask, size, channels).pixels[None]
        plane = predict(unet, pixels)[0, vessel].mul(255).round().to(torch.uint8).numpy()
        source = to_source(plane, (image.shape[1], image.shape[0]))
        probabilities.append(np.asarray(source, dtype=np.float32) / 255)
        truths.append(mask)
    scores = vessel_scores(probabilities, truths)
    lines = {
        "preset": args.preset,
        "unet_input_size": size,
        "encoder_start": weights or "random (no encoder weight file)",
        "train_images": len(train),
        "held_out_images": len(held_out),
        "vessel_steps": steps,
        "vessel_patches": steps * stage.batch,
        "vessel_f1": f"{scores.f1:.4f}",
        "vessel_auroc": f"{scores.auroc:.4f}",
        "vessel_precision": f"{scores.precision:.4f}",
        "vessel_recall": f"{scores.recall:.4f}",
        "vessel_train_s": f"{train_s:.1f}",
        "vessel_score_s": f"{time.perf_counter() - scored:.1f}",
        "wall_s": f"{time.perf_counter() - began:.1f}",
        "cpu_s": f"{time.process_time() - cpu_began:.1f}",
        "threads": torch.get_num_threads(),
        "load_average": f"{load_start:.2f} -> {os.getloadavg()[0]:.2f}",
    }
    for name, value in lines.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
