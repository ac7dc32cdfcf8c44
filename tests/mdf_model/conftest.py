"""Fixtures for the mdf_model tests: the tiny preset, built once per session, and fundus images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mdf_model import Classifier, MDFConfig, MDFModel, PreparedInput, load_classifier
from mdf_model.tiny import build_tiny_base, build_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # The CPUs are shared: with two threads, an OpenMP region waits for whichever thread the
    # other processes pushed off a core, and a U-Net pass went from 0.06 s to 3 s.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face Mllama directory (weights, tokenizer, processor): the base of
    ``tiny_checkpoint``, so ``make_model()`` without changes rebuilds that checkpoint's model."""
    labels = MDFConfig.from_preset("tiny").labels
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"), seed=0, extra_text=labels)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny", seed=0)


@pytest.fixture(scope="session")
def classifier(tiny_checkpoint: Path) -> Classifier:
    """The tiny checkpoint, loaded once: tests must not change it."""
    return load_classifier(tiny_checkpoint)


@pytest.fixture(scope="session")
def make_model(tiny_base_dir: Path) -> Callable[..., MDFModel]:
    """A fresh tiny model around the session's base directory, with configuration changes."""

    def make(*, seed: int = 0, **changes: object) -> MDFModel:
        config = MDFConfig.from_preset("tiny", **changes)
        return MDFModel.from_base(tiny_base_dir, config, seed=seed)

    return make


def synthetic_fundus(height: int, width: int, seed: int) -> np.ndarray:
    """An orange disc on black with a bright optic disc and dark branching vessels."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    radius = 0.45 * min(height, width)
    cx, cy = width / 2, height / 2
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(200, 90, 40))
    ox, oy = cx + radius * rng.uniform(0.2, 0.5), cy + radius * rng.uniform(-0.2, 0.2)
    draw.ellipse(
        (ox - 0.12 * radius, oy - 0.12 * radius, ox + 0.12 * radius, oy + 0.12 * radius),
        fill=(250, 220, 150),
    )
    for _ in range(12):
        angle = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(0.5, 0.9)
        end = (ox + length * np.cos(angle), oy + length * np.sin(angle))
        draw.line((ox, oy, *end), fill=(120, 30, 20), width=int(rng.integers(1, 4)))
    return np.asarray(image)


@pytest.fixture(scope="session")
def fundus_images() -> list[np.ndarray]:
    """Three photographs of different sizes and aspect ratios."""
    return [
        synthetic_fundus(300, 400, 0),
        synthetic_fundus(512, 512, 1),
        synthetic_fundus(256, 200, 2),
    ]


@pytest.fixture(scope="session")
def prepared(classifier: Classifier, fundus_images: list[np.ndarray]) -> list[PreparedInput]:
    texts = ["age 54, sex female, history of diabetes.", None, "family history of night blindness."]
    return [
        classifier.prepare(image, text) for image, text in zip(fundus_images, texts, strict=True)
    ]
