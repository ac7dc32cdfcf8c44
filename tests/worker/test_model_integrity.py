"""A worker serves a promoted version only as it was registered: the real loader, real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import structlog
from safetensors.torch import load_file, save_file
from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from mdf_model import load_classifier
from mdf_model.checkpoint import write_manifest
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
    return ModelServer(sessions, model_dir=None, device="cpu")


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
