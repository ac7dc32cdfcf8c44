"""Two chunks in flight in one worker: one is prepared while the other is on the model, the
two take turns on it, and a new version is never loaded beside a chunk still running."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_classifier import FakeClassifier, FakeLoader, FakeResult, write_jpeg
from image_rows import predictions_per_image, promote
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

from mdf.settings import Settings
from worker.cli import chunks_in_flight
from worker.serving import ModelServer

WAIT_S = 20  # only reached when the chunks do not overlap as they should
HOLD_S = 1.5  # how long the first chunk's pass holds the model once the second is prepared
FIRST, SECOND = (200, 220), (50, 70)  # the red of the first chunk's pictures, the second's


@dataclass
class TurnTakingClassifier(FakeClassifier):
    """The first chunk's pass holds the model until the second chunk has prepared a picture,
    and a while longer, so that the second chunk's pass comes while it still runs; counts
    the passes running at once."""

    model_busy: threading.Event = field(default_factory=threading.Event)
    second_prepared: threading.Event = field(default_factory=threading.Event)
    prepared_meanwhile: bool = False
    running: int = 0
    most_running: int = 0

    def prepare(self, image: Any, clinical_text: str | None) -> Any:
        if float(image[..., 0].mean()) < 128 and self.model_busy.is_set():  # a SECOND picture
            self.second_prepared.set()
        return super().prepare(image, clinical_text)

    def classify_prepared(self, batch: Sequence[Any], **kwargs: Any) -> list[FakeResult]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if not self.model_busy.is_set():
                self.model_busy.set()
                self.prepared_meanwhile = self.second_prepared.wait(WAIT_S)
                time.sleep(HOLD_S)  # the second chunk reaches the model meanwhile
            return super().classify_prepared(batch, **kwargs)
        finally:
            self.running -= 1


def test_a_chunk_is_prepared_while_another_is_on_the_model_and_they_take_turns(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    classifier = TurnTakingClassifier(version_hash="turns".ljust(64, "0"))
    pipeline = make_pipeline(sessions, tmp_path, lambda *_, **__: classifier)
    reds = [*FIRST, *SECOND]
    ids = add_files(sessions, [write_jpeg(tmp_path / f"{i}.jpg", r) for i, r in enumerate(reds)])
    first, second = ids[:2], ids[2:]
    with ThreadPoolExecutor(max_workers=2) as chunks:
        one = chunks.submit(pipeline.run, first, "first")
        assert classifier.model_busy.wait(WAIT_S)
        other = chunks.submit(pipeline.run, second, "second")
        outcomes = [one.result(2 * WAIT_S), other.result(2 * WAIT_S)]
    assert classifier.prepared_meanwhile  # the second chunk, while the first held the model
    assert classifier.most_running == 1  # ...whose passes never ran side by side
    assert outcomes[1].timings_ms["model_wait_ms"] > HOLD_S * 1000 / 2
    assert [outcome.written for outcome in outcomes] == [first, second]
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)


def _blocked(thread: threading.Thread) -> bool:
    thread.join(0.5)
    return thread.is_alive()


@pytest.fixture
def server(sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path) -> ModelServer:
    """A worker's server with version v1 promoted."""
    promote(sessions, "v1", tmp_path / "v1")
    return ModelServer(sessions, model_dir=None, device="cpu", vision_tiles=1, loader=fake_loader)


def test_a_new_version_is_loaded_once_no_chunk_holds_the_served_one_if_still_promoted(
    server: ModelServer,
    sessions: sessionmaker[Session],
    fake_loader: FakeLoader,
    tmp_path: Path,
) -> None:
    served: list[str] = []

    def next_chunk() -> None:
        with server.serving() as model:
            served.append(model.name)

    with server.serving() as running:
        assert running.name == "v1"
        promote(sessions, "v2", tmp_path / "v2")
        waiting = threading.Thread(target=next_chunk)
        waiting.start()
        assert _blocked(waiting) and fake_loader.loads == [tmp_path / "v1"]
        promote(sessions, "v3", tmp_path / "v3")  # v2 withdrawn before it was ever loaded
    waiting.join(WAIT_S)
    assert served == ["v3"] and fake_loader.loads == [tmp_path / "v1", tmp_path / "v3"]
    with server.serving() as model:  # loaded once, not again by the next chunk
        assert model.name == "v3" and len(fake_loader.loads) == 2


def test_a_chunk_started_before_runs_alone_and_the_next_chunks_wait_for_it(
    server: ModelServer,
) -> None:
    inside: list[str] = []
    leave = threading.Event()

    def chunk(name: str, alone: bool) -> None:
        with server.serving(alone=alone):
            inside.append(name)
            leave.wait(WAIT_S)

    with server.serving():
        alone = threading.Thread(target=chunk, args=("alone", True))
        alone.start()
        assert _blocked(alone)  # waits for the chunk running
        later = threading.Thread(target=chunk, args=("later", False))
        later.start()
        assert _blocked(later) and inside == []  # waits behind the one that waits
    assert _blocked(later) and inside == ["alone"]
    leave.set()
    alone.join(WAIT_S)
    later.join(WAIT_S)
    assert inside == ["alone", "later"]


@pytest.mark.parametrize(
    ("device", "setting", "queues", "expected"),
    [
        ("cpu", 0, ["inference"], 1),
        ("cuda:0", 0, ["inference"], 2),
        ("cuda:0", 0, ["inference", "deliver"], 2),
        ("cpu", 3, ["inference"], 3),
        ("cuda:0", 0, ["inference", "training"], 1),
        ("cuda:0", 2, ["deliver"], 1),
    ],
)
def test_two_chunks_are_in_flight_only_where_the_model_has_its_own_chip(
    device: str, setting: int, queues: list[str], expected: int
) -> None:
    settings = Settings(device=device, chunks_in_flight=setting)
    assert chunks_in_flight(settings, queues) == expected
