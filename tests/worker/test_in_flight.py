"""Two chunks in flight in one worker: one is prepared while the other is on the model, the
two take turns on it, and a new version is never loaded beside a chunk still running."""

from __future__ import annotations

import threading
from collections.abc import Sequence
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
from worker.inference import ChunkOutcome
from worker.serving import ModelServer

WAIT_S = 20  # only reached when the chunks do not overlap as they should
FIRST, SECOND = (200, 220), (50, 70)  # the red of the first chunk's pictures, the second's


@dataclass
class TurnTakingClassifier(FakeClassifier):
    """The first chunk's pass holds the model until the second chunk has prepared a picture,
    and a while longer, so that the second chunk's pass comes while it still runs; counts
    the passes running at once."""

    model_busy: threading.Event = field(default_factory=threading.Event)
    second_prepared: threading.Event = field(default_factory=threading.Event)
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
                self.second_prepared.wait(WAIT_S)
                threading.Event().wait(0.5)  # the second chunk reaches the model meanwhile
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
    outcomes: dict[str, ChunkOutcome] = {}

    def run(name: str, ids: list[int]) -> None:
        outcomes[name] = pipeline.run(ids, token=name)

    threads = [threading.Thread(target=run, args=("first", first))]
    threads[0].start()
    assert classifier.model_busy.wait(WAIT_S)
    threads.append(threading.Thread(target=run, args=("second", second)))
    threads[1].start()
    for thread in threads:
        thread.join(2 * WAIT_S)
    assert classifier.second_prepared.is_set()  # prepared while the first held the model
    assert classifier.most_running == 1  # ...whose passes never ran side by side
    assert outcomes["second"].timings_ms["model_wait_ms"] > 100
    assert outcomes["first"].written == first and outcomes["second"].written == second
    assert predictions_per_image(sessions) == dict.fromkeys(first + second, 1)


def test_a_new_version_is_loaded_only_once_no_chunk_holds_the_served_one(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    server = ModelServer(sessions, model_dir=None, device="cpu", vision_tiles=1, loader=fake_loader)
    promote(sessions, "v1", tmp_path / "v1")
    served: dict[str, str] = {}

    def next_chunk() -> None:
        with server.serving() as model:
            served["next"] = model.name

    with server.serving() as running:
        assert running.name == "v1"
        promote(sessions, "v2", tmp_path / "v2")
        waiting = threading.Thread(target=next_chunk)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and fake_loader.loads == [tmp_path / "v1"]
    waiting.join(WAIT_S)
    assert served == {"next": "v2"} and fake_loader.loads == [tmp_path / "v1", tmp_path / "v2"]
    with server.serving() as model:  # loaded once, not again by the chunk that waited
        assert model.name == "v2" and len(fake_loader.loads) == 2


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
