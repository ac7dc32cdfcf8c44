"""What decoding a camera's JPEG reduced changes: gradability and the model's answers.

The STARE photographs (700 x 605) and their degradations (those of bench/gradability.py)
are put at a 10 MP camera's size: the fundus at the frame's height, centred on a 3504 x 2336
black frame, JPEG at quality 95. Each is assessed after a full decode and after the worker's
reduced decode (``mdf.imaging.decode_reduced`` at ``worker.inference.decode_side`` for the
tiny model, and at a quarter of the size, one decoded pixel per working pixel, for
comparison). For scale: how many decisions change between the photograph at its delivered
size and its full decode at the camera's size, which no decoding choice causes. Then the
tiny model's label probabilities and masks on the 20 photographs, full against reduced.

Printed as ``name: value`` lines: per set (original, severe, mild) and decoding, images,
gradability decisions changed, decisions or reasons changed, and the largest and mean
score difference; milliseconds per image of each decode.

    python bench/decode_reduced.py [--data DIR]   # DIR: the STARE folder (images/*.png)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mdf.imaging import decode_frame, decode_reduced
from mdf.imaging.quality import Quality, QualityThresholds, assess
from mdf.synthetic.degradations import MILD, SEVERE
from worker.inference import decode_side

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stare"
CAMERA = (3504, 2336)


def camera_jpeg(pixels: np.ndarray) -> bytes:
    """The photograph as a 10 MP camera frames it, JPEG at quality 95."""
    width, height = CAMERA
    picture = Image.fromarray(pixels)
    fundus = picture.resize((round(picture.width * height / picture.height), height))
    frame = Image.new("RGB", CAMERA)
    frame.paste(fundus, ((width - fundus.width) // 2, 0))
    buffer = BytesIO()
    frame.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def photographs(originals: list[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(set, pixels): the originals, then each severe and each mild degradation of each."""
    for image in originals:
        yield "original", image
    for level, degradations in (("severe", SEVERE), ("mild", MILD)):
        for degrade in degradations.values():
            for index, image in enumerate(originals):
                yield level, degrade(image, np.random.default_rng(index))


def decision(quality: Quality) -> tuple[bool, tuple[str, ...]]:
    return quality.gradable, tuple(quality.reasons)


def gradability(
    originals: list[np.ndarray],
    thresholds: QualityThresholds,
    decoders: dict[str, Callable[[bytes], np.ndarray]],
) -> None:
    """Each photograph assessed after a full decode and after each of ``decoders``."""
    stats: dict[str, list[float]] = {}
    spent = dict.fromkeys(("full", *decoders), 0.0)
    count = 0
    for kind, pixels in photographs(originals):
        data = camera_jpeg(pixels)
        clock = time.process_time()
        full = assess(decode_frame(data), thresholds)
        spent["full"] += time.process_time() - clock
        delivered = assess(pixels, thresholds)
        stats.setdefault(f"{kind}_delivered_size_decisions_changed", []).append(
            delivered.gradable != full.gradable
        )
        for name, decode in decoders.items():
            clock = time.process_time()
            reduced = assess(decode(data), thresholds)
            spent[name] += time.process_time() - clock
            key = f"{kind}_{name}"
            stats.setdefault(f"{key}_decisions_changed", []).append(
                full.gradable != reduced.gradable
            )
            stats.setdefault(f"{key}_reasons_changed", []).append(
                decision(full) != decision(reduced)
            )
            stats.setdefault(f"{key}_score_difference", []).append(abs(full.score - reduced.score))
        count += 1
    for kind in ("original", "severe", "mild"):
        changed = stats[f"{kind}_delivered_size_decisions_changed"]
        print(f"{kind}_images: {len(changed)}")
        print(f"{kind}_delivered_size_decisions_changed: {sum(changed):.0f}")
        for name in decoders:
            key = f"{kind}_{name}"
            print(f"{key}_decisions_changed: {sum(stats[f'{key}_decisions_changed']):.0f}")
            print(f"{key}_reasons_changed: {sum(stats[f'{key}_reasons_changed']):.0f}")
            differences = stats[f"{key}_score_difference"]
            print(f"{key}_score_difference_max: {max(differences):.4f}")
            print(f"{key}_score_difference_mean: {np.mean(differences):.4f}")
    for name, seconds in spent.items():
        print(f"decode_and_assess_{name}_cpu_ms_per_image: {1000 * seconds / count:.1f}")


def answers(
    classifier: Any, originals: list[np.ndarray], decode: Callable[[bytes], np.ndarray]
) -> None:
    """The tiny model's labels, probabilities and masks, full decode against ``decode``."""
    full_inputs, reduced_inputs = [], []
    for image in originals:
        data = camera_jpeg(image)
        full_inputs.append(classifier.prepare(decode_frame(data), None))
        reduced_inputs.append(classifier.prepare(decode(data), None))
    full_answers = classifier.classify_prepared(full_inputs, generate_text=False)
    reduced_answers = classifier.classify_prepared(reduced_inputs, generate_text=False)
    pairs = list(zip(full_answers, reduced_answers, strict=True))
    probability = max(
        abs(a.probabilities[label] - b.probabilities[label])
        for a, b in pairs
        for label in classifier.labels
    )
    spread = max(
        np.ptp([a.probabilities[label] for a in full_answers]) for label in classifier.labels
    )
    mask = max(np.abs(a.mask.astype(int) - b.mask.astype(int)).mean() for a, b in pairs)
    print(f"tiny_labels_changed: {sum(a.label != b.label for a, b in pairs)}")
    print(f"tiny_probability_difference_max: {probability:.2e}")
    print(f"tiny_probability_spread_across_photographs: {spread:.4f}")
    print(f"tiny_mask_mean_difference_max: {mask:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    paths = sorted((args.data / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"no photographs in {args.data / 'images'}")
    originals = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    thresholds = QualityThresholds()
    from mdf_model import build_tiny_checkpoint, load_classifier

    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as tmp:
        classifier = load_classifier(build_tiny_checkpoint(Path(tmp) / "checkpoint"))
        side = decode_side(classifier, thresholds)
        decoders: dict[str, Callable[[bytes], np.ndarray]] = {
            "reduced": lambda data: decode_reduced(data, long_side=side).pixels,
            "quarter": lambda data: decode_reduced(data, long_side=thresholds.working_size).pixels,
        }
        print(f"decode_side: {side}")
        gradability(originals, thresholds, decoders)
        answers(classifier, originals, decoders["reduced"])


if __name__ == "__main__":
    main()
