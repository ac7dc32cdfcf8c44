"""A classifier the worker can serve (``worker.serving.Classifier``) that needs no torch,
and pictures for it.

Black pictures are unusable (``prepare`` raises, as a real model does for a lens cap),
pure red ones break the forward pass, and the red channel decides the label, so every
outcome is predictable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage


@dataclass(frozen=True)
class FakeResult:
    label: str
    probabilities: dict[str, float]
    text: str
    text_label: str | None
    agrees: bool
    mask: np.ndarray


@dataclass
class FakeClassifier:
    """``worker.serving.Classifier``: black pictures are unusable, like a lens cap, and pure
    red ones crash the forward pass of any batch they are in."""

    version_hash: str
    labels: list[str] = field(default_factory=lambda: ["acquired", "inherited"])
    mask_channels: list[str] = field(default_factory=lambda: ["vessels", "lesions"])
    input_side: int = 32  # the side it would resample to: a large JPEG is decoded reduced
    batches: list[int] = field(default_factory=list)  # size of each classify_prepared call
    on_classify: Callable[[], None] | None = None  # runs inside classify_prepared, once
    on_prepare: Callable[[], None] | None = None  # runs inside every prepare
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) prepared

    def prepare(self, image: np.ndarray, clinical_text: str | None) -> Any:
        self.shapes.append(image.shape[:2])
        if self.on_prepare is not None:
            self.on_prepare()
        if image.mean() < 5:
            raise ValueError("no retina visible: the picture is black")
        return float(image[..., 0].mean())

    def classify_prepared(
        self, batch: Sequence[Any], *, generate_text: bool = True, max_new_tokens: int = 16
    ) -> list[FakeResult]:
        self.batches.append(len(batch))
        if self.on_classify is not None:
            hook, self.on_classify = self.on_classify, None
            hook()
        if any(red > 250 for red in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        results = []
        for red in batch:
            p = min(max(red / 255, 0.0), 1.0)
            label = "inherited" if p > 0.5 else "acquired"
            mask = np.full((2, 8, 8), 255 if label == "inherited" else 0, dtype=np.uint8)
            probabilities = {"acquired": 1 - p, "inherited": p}
            results.append(FakeResult(label, probabilities, f" {label}", label, True, mask))
        return results


@dataclass
class FakeLoader:
    """``load_classifier``: a checkpoint directory named ``broken*`` fails to load."""

    loads: list[Path] = field(default_factory=list)

    def __call__(self, path: Path, *, device: str = "cpu", vision_tiles: int) -> FakeClassifier:
        self.loads.append(Path(path))
        if Path(path).name.startswith("broken"):
            raise ValueError(f"{path}: manifest.json does not match the weights")
        return FakeClassifier(version_hash=f"{Path(path).name:0<64}"[:64])


def write_jpeg(path: Path, red: int, size: tuple[int, int] = (64, 64)) -> Path:
    """A colour JPEG of ``size`` (width, height); ``red=0`` gives a black picture the fake
    classifier refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = red
    pixels[..., 1] = red // 3
    PILImage.fromarray(pixels).save(path, "JPEG", quality=95)
    return path
