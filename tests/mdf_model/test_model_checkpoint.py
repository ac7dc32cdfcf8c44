"""Checkpoint directories: bit-identical round trips, base references, and refusing damage."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdf_model import CheckpointError, Classifier, MDFModel, PreparedInput, load_classifier
from mdf_model.checkpoint import read_verified, verify_manifest, write_manifest
from mdf_model.tiny import build_tiny_checkpoint


def outputs(classifier: Classifier, batch: list[PreparedInput]) -> tuple[torch.Tensor, ...]:
    inputs = classifier.scoring_inputs(batch)
    with torch.no_grad():
        out = classifier.model.eval()(inputs)
    return out.logits, out.seg_logits


@pytest.fixture
def damaged(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "copy"))


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_save_then_load_is_bit_identical(
    classifier: Classifier, prepared: list[PreparedInput], tmp_path: Path
) -> None:
    version = classifier.model.save_pretrained(tmp_path / "saved")
    reloaded = load_classifier(tmp_path / "saved")
    assert reloaded.version_hash == version
    # Unchanged weights, unchanged bytes: the version hash is a content id.
    assert version == classifier.version_hash
    for a, b in zip(outputs(classifier, prepared), outputs(reloaded, prepared), strict=True):
        assert torch.equal(a, b)


def test_the_same_seed_builds_the_same_checkpoint(classifier: Classifier, tmp_path: Path) -> None:
    build_tiny_checkpoint(tmp_path / "again", seed=0)
    assert load_classifier(tmp_path / "again").version_hash == classifier.version_hash


def test_checkpoint_files_get_the_umask_mode(classifier: Classifier, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        classifier.save(tmp_path / "saved")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "saved").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}


def test_saving_refuses_a_non_empty_directory(classifier: Classifier, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        classifier.save(tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_file_is_named(damaged: Path) -> None:
    _flip_byte(damaged / "fusion.safetensors")
    with pytest.raises(CheckpointError, match=r"^fusion\.safetensors: content hash"):
        load_classifier(damaged)


def test_truncated_file_is_named(damaged: Path) -> None:
    path = damaged / "unet.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"^unet\.safetensors: 1000 bytes.*truncated"):
        load_classifier(damaged)


def test_missing_file_is_named(damaged: Path) -> None:
    (damaged / "processor" / "tokenizer.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"^processor/tokenizer\.json: listed in the manifest"
    ):
        load_classifier(damaged)


def test_missing_manifest_is_named(damaged: Path) -> None:
    (damaged / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"^manifest\.json: missing"):
        load_classifier(damaged)


def test_edited_manifest_is_named(damaged: Path) -> None:
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["files"]["unet.safetensors"]["size"] += 1
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"^manifest\.json: version hash"):
        load_classifier(damaged)


@pytest.mark.parametrize(
    "extra", ["notes.txt", "processor/manifest.json", "base/pytorch_model.bin"]
)
def test_a_file_the_manifest_does_not_list_invalidates_the_checkpoint(
    damaged: Path, extra: str
) -> None:
    (damaged / extra).write_bytes(b"not listed")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(extra)}: in the checkpoint but not"):
        load_classifier(damaged)


def test_a_link_the_manifest_does_not_list_invalidates_the_checkpoint(damaged: Path) -> None:
    (damaged / "base" / "more").symlink_to(damaged / "processor", target_is_directory=True)
    with pytest.raises(CheckpointError, match=r"^base/more: in the checkpoint but not listed"):
        load_classifier(damaged)


def test_a_checkpoint_rewritten_after_registration_is_refused(damaged: Path) -> None:
    registered = json.loads((damaged / "manifest.json").read_text())["version_hash"]
    assert load_classifier(damaged, expected_manifest_sha256=registered).version_hash == registered
    path = damaged / "unet.safetensors"
    state = load_file(str(path))
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path))
    rewritten = write_manifest(damaged)  # consistent: the checkpoint alone loads
    assert load_classifier(damaged).version_hash == rewritten != registered
    with pytest.raises(
        CheckpointError,
        match=rf"^manifest\.json: manifest hash {rewritten} differs from the "
        rf"registered {registered}",
    ):
        load_classifier(damaged, expected_manifest_sha256=registered)


def test_a_file_replaced_after_verification_is_not_read(damaged: Path) -> None:
    manifest = verify_manifest(damaged)  # what loading verifies first
    _flip_byte(damaged / "unet.safetensors")  # then reads, a moment later
    with pytest.raises(CheckpointError, match=r"^unet\.safetensors: changed while"):
        read_verified(damaged, manifest, "unet.safetensors")
    assert read_verified(damaged, manifest, "mdf_config.json")  # an unchanged one is read


def test_weights_of_the_wrong_shape_are_named_even_with_a_fresh_manifest(damaged: Path) -> None:
    path = damaged / "fusion.safetensors"
    state = load_file(str(path))
    state["projection.row_embedding"] = torch.zeros(8, 128)
    save_file(state, str(path))
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^fusion\.safetensors.*row_embedding \(8, 128\)"):
        load_classifier(damaged)


def test_missing_weights_are_named_even_with_a_fresh_manifest(damaged: Path) -> None:
    path = damaged / "unet.safetensors"
    state = load_file(str(path))
    del state["net.segmentation_head.0.weight"]
    save_file(state, str(path))
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^unet\.safetensors.*missing keys"):
        load_classifier(damaged)


def test_incomplete_base_weights_are_refused(damaged: Path) -> None:
    path = damaged / "base" / "model.safetensors"
    state = load_file(str(path))
    del state["language_model.lm_head.weight"]
    save_file(state, str(path), metadata={"format": "pt"})
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^base: base weights do not match.*lm_head"):
        load_classifier(damaged)


def test_invalid_configuration_is_named(damaged: Path) -> None:
    path = damaged / "mdf_config.json"
    config = json.loads(path.read_text())
    config["fusion_layers"] = [2]
    path.write_text(json.dumps(config))
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^mdf_config\.json.*valid fusion layers"):
        load_classifier(damaged)


def test_configuration_that_does_not_match_the_files_is_named(damaged: Path) -> None:
    path = damaged / "mdf_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "baseline": True}))
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^unet\.safetensors: present.*baseline=True"):
        load_classifier(damaged)


def test_frozen_base_is_referenced_not_copied(
    make_model, tiny_base_dir: Path, prepared: list[PreparedInput], tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_base_dir, tmp_path / "llama"))
    config = make_model().config.replace(frozen=("mllm",), alpha=0.5)
    model = MDFModel.from_base(base, config, seed=0)
    version = model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "base").exists()
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["base_reference"]["path"] == str(base.resolve())

    loaded = load_classifier(tmp_path / "ckpt")
    assert loaded.version_hash == version
    for a, b in zip(outputs(Classifier(model), prepared), outputs(loaded, prepared), strict=True):
        assert torch.equal(a, b)

    moved = Path(shutil.move(base, tmp_path / "moved"))
    with pytest.raises(
        CheckpointError, match=r"^manifest\.json: referenced base model directory not found"
    ):
        load_classifier(tmp_path / "ckpt")
    assert load_classifier(tmp_path / "ckpt", base_dir=moved).version_hash == version
    _flip_byte(moved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"^base model model\.safetensors: content hash"):
        load_classifier(tmp_path / "ckpt", base_dir=moved)
