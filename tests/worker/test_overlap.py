"""Preprocessing overlapped with the model inside a chunk: the model runs on the images
prepared first while the pool prepares the rest, in order, and an image that fails in a
later batch still fails alone, with its reason."""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_classifier import FakeClassifier, FakeResult, write_jpeg
from image_rows import image_reasons, predictions_per_image, statuses
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import ImageStatus
from mdf.settings import Settings
from worker.inference import Pipeline, ready_in_order

GATED_RED = 120  # the picture whose preparation waits for the model to start
# How long the gated picture waits before giving up: only reached when nothing overlaps.
GATE_TIMEOUT_S = 20


@dataclass
class GatedClassifier(FakeClassifier):
    """Prepares the picture of red GATED_RED only once a forward pass has begun, and
    records prepares and passes in the order they happen."""

    model_started: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, int]] = field(default_factory=list)

    def prepare(self, image: np.ndarray, clinical_text: str | None) -> Any:
        gated = abs(float(image[..., 0].mean()) - GATED_RED) < 3  # JPEG moves it a little
        if gated and not self.model_started.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the model did not start before the chunk was prepared")
        self.events.append(("prepared", GATED_RED if gated else 0))
        return super().prepare(image, clinical_text)

    def classify_prepared(self, batch: Any, **kwargs: Any) -> list[FakeResult]:
        self.events.append(("pass", len(batch)))
        self.model_started.set()
        return super().classify_prepared(batch, **kwargs)


@dataclass
class GatedLoader:
    classifier: GatedClassifier = field(
        default_factory=lambda: GatedClassifier(version_hash="gated".ljust(64, "0"))
    )

    def __call__(self, path: Path, *, device: str = "cpu", vision_tiles: int) -> GatedClassifier:
        return self.classifier


def _overlapping(sessions: sessionmaker[Session], tmp_path: Path, loader: GatedLoader) -> Pipeline:
    """The pipeline of a worker whose model is off the CPU, with a pool of two threads
    whatever the machine: a chunk longer than the pool."""
    return dataclasses.replace(make_pipeline(sessions, tmp_path, loader), overlap=True, threads=2)


def test_the_model_starts_before_the_chunk_is_prepared(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The third picture is prepared only after the first pass began: without the
    overlap it would wait for a model that waits for it, and fail."""
    reds = [200, 40, GATED_RED, 20, 180]
    ids = add_files(sessions, [write_jpeg(tmp_path / f"{i}.jpg", r) for i, r in enumerate(reds)])
    loader = GatedLoader()
    outcome = _overlapping(sessions, tmp_path, loader).run(ids)
    assert outcome.written == ids and outcome.failed == {}
    events = loader.classifier.events
    assert events.index(("pass", 2)) < events.index(("prepared", GATED_RED))
    assert loader.classifier.batches[0] == 2 and sum(loader.classifier.batches) == 5
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)


def test_failures_in_a_later_batch_stay_with_their_images(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """After the first pass (the first two pictures: the third waits for it), a file that
    is not a picture and a picture that breaks the forward pass fail alone, with their
    reasons; the rest is written once."""
    good = [write_jpeg(tmp_path / f"{i}.jpg", r) for i, r in enumerate([200, 40, GATED_RED])]
    text = tmp_path / "notes.jpg"
    text.write_text("not a photograph")
    breaking = write_jpeg(tmp_path / "red.jpg", 255)
    last = write_jpeg(tmp_path / "last.jpg", 90)
    ids = add_files(sessions, [*good, text, breaking, last])
    loader = GatedLoader()
    outcome = _overlapping(sessions, tmp_path, loader).run(ids)
    assert loader.classifier.batches[0] == 2
    assert outcome.written == [*ids[:3], ids[5]]
    reasons = image_reasons(sessions)
    assert reasons[ids[3]][0] == "not_an_image"
    assert reasons[ids[4]] == (
        "inference_error",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
    )
    assert statuses(sessions) == {
        **dict.fromkeys([*ids[:3], ids[5]], ImageStatus.DONE),
        **dict.fromkeys(ids[3:5], ImageStatus.FAILED),
    }
    assert predictions_per_image(sessions) == dict.fromkeys([*ids[:3], ids[5]], 1)


def test_batches_are_handed_out_in_order_as_they_are_ready() -> None:
    """Each batch waits for the next two and takes the finished ones after them, up to
    the first that is not finished: never one out of order."""
    futures: list[Future[int]] = [Future() for _ in range(6)]
    for index in (0, 1, 2, 4):
        futures[index].set_result(index)
    batches = ready_in_order(futures, at_least=2)
    assert next(batches) == [0, 1, 2]  # 3 is not finished: 4 waits behind it
    futures[3].set_result(3)
    futures[5].set_result(5)
    assert next(batches) == [3, 4, 5]
    assert next(batches, None) is None


@pytest.mark.parametrize(("device", "overlap"), [("cpu", False), ("cuda:0", True)])
def test_preprocessing_overlaps_the_model_only_off_the_cpu(device: str, overlap: bool) -> None:
    pipeline = Pipeline.from_settings(
        Settings(device=device), sessions=sessionmaker(), server=None, worker="w1@host"
    )
    assert pipeline.overlap is overlap


@pytest.mark.parametrize(
    ("setting", "threads"), [(0, len(os.sched_getaffinity(0))), (3, 3), (1, 1)]
)
def test_the_pool_has_a_thread_per_usable_cpu_unless_set(setting: int, threads: int) -> None:
    pipeline = Pipeline.from_settings(
        Settings(preprocess_threads=setting), sessions=sessionmaker(), server=None, worker="w"
    )
    assert pipeline.threads == threads
