"""Which version a worker serves: the promoted one, else MDF_MODEL_DIR; swapped between chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from fake_classifier import FakeLoader
from image_rows import promote
from sqlalchemy.orm import Session, sessionmaker

from db.models import ModelVersion
from worker.serving import Classifier, ModelServer, ModelUnavailable


def _server(sessions: sessionmaker[Session], loader: FakeLoader, model_dir: Path | None = None):
    return ModelServer(sessions, model_dir=model_dir, device="cpu", vision_tiles=1, loader=loader)


def test_neither_promoted_nor_model_dir_is_a_clear_error(
    sessions: sessionmaker[Session], fake_loader: FakeLoader
) -> None:
    with pytest.raises(ModelUnavailable, match=r"no model version is promoted.*MDF_MODEL_DIR"):
        _server(sessions, fake_loader).current()
    assert fake_loader.loads == []


def test_an_unloadable_model_dir_is_a_clear_error(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    """The reason, without the directory a log line must not show."""
    with pytest.raises(
        ModelUnavailable, match=r"MDF_MODEL_DIR cannot be loaded: .*manifest"
    ) as refused:
        _server(sessions, fake_loader, tmp_path / "broken").current()
    assert str(tmp_path) not in str(refused.value)


def test_model_dir_is_registered_once_and_served_until_something_is_promoted(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    first = _server(sessions, fake_loader, tmp_path / "base")
    served = first.current()
    assert first.current() is served  # loaded once, not per chunk
    second = _server(sessions, fake_loader, tmp_path / "base").current()  # another worker
    assert second.version_id == served.version_id
    with sessions() as session:
        (version,) = session.scalars(sa.select(ModelVersion)).all()
    assert version.name == served.name == served.classifier.version_hash[:12]
    assert version.manifest_sha256 == served.classifier.version_hash
    assert version.path == str((tmp_path / "base").resolve())
    assert version.labels == ["acquired", "inherited"]
    assert not version.is_promoted
    assert isinstance(served.classifier, Classifier)
    assert fake_loader.loads == [tmp_path / "base", tmp_path / "base"]


def test_a_new_promotion_is_loaded_at_the_next_chunk(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    server = _server(sessions, fake_loader, tmp_path / "base")
    assert server.current().name != "v1"
    v1 = promote(sessions, "v1", tmp_path / "v1")
    assert server.current().version_id == v1
    assert server.current().version_id == v1
    v2 = promote(sessions, "v2", tmp_path / "v2")
    served = server.current()
    assert (served.version_id, served.name) == (v2, "v2")
    assert fake_loader.loads == [tmp_path / "base", tmp_path / "v1", tmp_path / "v2"]


def test_a_broken_promotion_keeps_the_served_version_and_is_tried_once(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    server = _server(sessions, fake_loader)
    v1 = promote(sessions, "v1", tmp_path / "v1")
    assert server.current().version_id == v1
    promote(sessions, "v2", tmp_path / "broken-v2")
    with structlog.testing.capture_logs() as logs:
        assert server.current().version_id == v1
        assert server.current().version_id == v1
    assert fake_loader.loads == [tmp_path / "v1", tmp_path / "broken-v2"]
    (failed,) = [line for line in logs if line["event"] == "model_load_failed"]
    assert failed["model_version"] == "v2"
    assert failed["error"] == "the checkpoint: manifest.json does not match the weights"


def test_a_broken_promotion_with_nothing_served_is_a_clear_error(
    sessions: sessionmaker[Session], fake_loader: FakeLoader, tmp_path: Path
) -> None:
    promote(sessions, "v3", tmp_path / "broken-v3")
    with pytest.raises(ModelUnavailable, match="v3 cannot be loaded") as refused:
        _server(sessions, fake_loader, tmp_path / "base").current()
    assert str(tmp_path) not in str(refused.value)
