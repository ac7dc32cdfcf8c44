"""A worker serves a promoted version only as it was registered: the real loader, real files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from in_process import mdf_command
from safetensors.torch import load_file, save_file
from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from db.models import ModelVersion
from mdf.settings import Settings
from mdf_model import load_classifier
from mdf_model.checkpoint import write_manifest
from tests.mdf_model.legacy import released_before_vision_tiles
from worker.serving import ModelServer, ModelUnavailable


def _registered(sessions: sessionmaker[Session], source: Path, name: str, target: Path) -> str:
    """Copy a checkpoint to ``target``, register and promote it as the trainer does; its
    registered manifest hash."""
    shutil.copytree(source, target)
    manifest_sha256 = json.loads((target / "manifest.json").read_text())["version_hash"]
    with sessions.begin() as session:
        version = model_versions.register_version(
            session, path=target, manifest_sha256=manifest_sha256, labels=["a", "b"], name=name
        )
        model_versions.promote(session, version, reason="a test promotes it")
    return manifest_sha256


def _rewrite_consistently(checkpoint: Path) -> str:
    """Other U-Net weights and a manifest that matches them: loadable on its own."""
    path = checkpoint / "unet.safetensors"
    state = load_file(str(path))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(path))
    return write_manifest(checkpoint)


def _server(sessions: sessionmaker[Session]) -> ModelServer:
    return ModelServer(sessions, model_dir=None, device="cpu", vision_tiles=1)


def test_the_registered_checkpoint_is_served(
    sessions: sessionmaker[Session], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    registered = _registered(sessions, tiny_checkpoint, "v1", tmp_path / "v1")
    served = _server(sessions).current()
    assert (served.name, served.classifier.version_hash) == ("v1", registered)


def test_a_checkpoint_rewritten_after_registration_is_refused_and_not_served(
    sessions: sessionmaker[Session], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    server = _server(sessions)
    _registered(sessions, tiny_checkpoint, "v1", tmp_path / "v1")
    assert server.current().name == "v1"
    other = Path(shutil.copytree(tiny_checkpoint, tmp_path / "other"))
    _rewrite_consistently(other)  # a second version, trained later
    registered = _registered(sessions, other, "v2", tmp_path / "v2")
    rewritten = _rewrite_consistently(tmp_path / "v2")
    assert load_classifier(tmp_path / "v2").version_hash == rewritten  # a sound checkpoint

    with structlog.testing.capture_logs() as logs:
        assert server.current().name == "v1"  # keeps serving what it served
        assert server.current().name == "v1"  # and does not try again
    (failed,) = [line for line in logs if line["event"] == "model_load_failed"]
    assert failed["model_version"] == "v2"
    assert f"manifest hash {rewritten} differs from the registered {registered}" in failed["error"]
    assert str(tmp_path) not in repr(logs)

    refusal = rf"v2 cannot be loaded: .*{rewritten}.*{registered}"
    with pytest.raises(ModelUnavailable, match=refusal):
        _server(sessions).current()  # a worker with nothing served refuses to start


def test_a_file_the_manifest_does_not_list_invalidates_a_promoted_checkpoint(
    sessions: sessionmaker[Session], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    _registered(sessions, tiny_checkpoint, "v1", tmp_path / "v1")
    (tmp_path / "v1" / "processor" / "extra.json").write_text("{}")
    with pytest.raises(
        ModelUnavailable, match=r"v1 cannot be loaded: processor/extra\.json: in the checkpoint"
    ):
        _server(sessions).current()


@pytest.fixture(scope="module")
def two_tile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained to compute two vision tiles per photograph."""
    from mdf_model import build_tiny_checkpoint

    directory = tmp_path_factory.mktemp("checkpoint") / "two-tiles"
    return Path(build_tiny_checkpoint(directory, seed=0, vision_tiles=2))


def test_a_checkpoint_of_another_tile_count_is_refused_with_the_reason(
    sessions: sessionmaker[Session], two_tile_checkpoint: Path, tmp_path: Path
) -> None:
    """Its answers would differ from those it was validated with: a worker serving one tile
    refuses it, promoted or as MDF_MODEL_DIR, and a worker serving two serves it."""
    refusal = r"mdf_config\.json: trained with vision_tiles 2, served with 1"
    unpromoted = ModelServer(sessions, model_dir=two_tile_checkpoint, device="cpu", vision_tiles=1)
    with pytest.raises(ModelUnavailable, match=rf"MDF_MODEL_DIR cannot be loaded: {refusal}"):
        unpromoted.current()
    with sessions() as session:  # nothing was registered
        assert session.scalar(sa.select(sa.func.count()).select_from(ModelVersion)) == 0

    _registered(sessions, two_tile_checkpoint, "v2", tmp_path / "v2")
    with structlog.testing.capture_logs() as logs, pytest.raises(ModelUnavailable) as refused:
        _server(sessions).current()
    assert re.search(rf"v2 cannot be loaded: {refusal}", str(refused.value))
    (failed,) = [line for line in logs if line["event"] == "model_load_failed"]
    assert failed["model_version"] == "v2" and re.match(refusal, failed["error"])
    assert str(tmp_path) not in repr(logs)  # a site's directory names may identify someone
    served = ModelServer(sessions, model_dir=None, device="cpu", vision_tiles=2).current()
    assert served.name == "v2" and served.classifier.model.config.vision_tiles == 2


def test_mdf_worker_with_another_tile_count_does_not_start(
    settings: Settings,
    two_tile_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MDF_MODEL_DIR", str(two_tile_checkpoint))
    with mdf_command(capsys) as mdf:
        code, _, err = mdf("worker", "--queues", "inference")
    assert code == 2
    assert "trained with vision_tiles 2, served with 1" in err


@pytest.mark.parametrize("promoted", [True, False], ids=["promoted", "MDF_MODEL_DIR"])
def test_a_checkpoint_of_the_previous_release_is_served_as_it_was_trained(
    sessions: sessionmaker[Session], tiny_checkpoint: Path, tmp_path: Path, promoted: bool
) -> None:
    """It records no vision_tiles: a worker serving one tile serves its four, instead of
    refusing every model an operator upgraded with."""
    legacy = released_before_vision_tiles(tiny_checkpoint, tmp_path / "legacy")
    if promoted:
        _registered(sessions, legacy, "v1", tmp_path / "v1")
    server = ModelServer(
        sessions, model_dir=None if promoted else legacy, device="cpu", vision_tiles=1
    )
    assert server.current().classifier.model.config.vision_tiles == 4
