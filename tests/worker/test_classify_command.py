"""``mdf classify``: files classified with a checkpoint, decoded as the workers decode them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from corpus import fundus_image
from in_process import Mdf, mdf_command
from PIL import Image

from mdf.imaging.dicom_writer import write_dicom_op
from mdf_model import build_tiny_checkpoint, load_classifier

LABELS = ("normal", "glaucoma", "AMD")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``mdf model init --preset tiny --seed 3 --labels normal,glaucoma,AMD`` writes."""
    directory = tmp_path_factory.mktemp("checkpoint") / "tiny"
    return Path(build_tiny_checkpoint(directory, seed=3, labels=list(LABELS)))


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


def classify(mdf: Mdf, checkpoint: Path, *files: Path) -> tuple[int, list[dict], str]:
    code, out, err = mdf(
        "classify", str(checkpoint), *map(str, files), "--json", "--max-new-tokens", "3"
    )
    return code, json.loads(out), err


def test_files_of_every_kind_are_classified_and_a_bad_one_says_why(
    checkpoint: Path, tmp_path: Path, mdf: Mdf
) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"not an image")
    dicom = write_dicom_op(tmp_path / "d", fundus_image(), laterality="R")
    files = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png", dicom]
    code, entries, _ = classify(mdf, checkpoint, *files)
    assert code == 1
    assert [e["file"] for e in entries] == [str(f) for f in files]
    version = load_classifier(checkpoint).version_hash
    for entry in [*entries[:2], entries[3]]:
        assert entry["label"] in LABELS
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert entry["version_hash"] == version
    assert "error" in entries[2]
    assert entries[2]["error"].startswith("not_an_image: ")


def test_a_dicom_file_is_classified(checkpoint: Path, tmp_path: Path, mdf: Mdf) -> None:
    """Once refused with "cannot identify image file": the command had a reader of its own."""
    dicom = write_dicom_op(
        tmp_path / "eye.dcm", fundus_image(), laterality="L", transfer_syntax="jpeg-baseline"
    )
    code, (entry,), _ = classify(mdf, checkpoint, dicom)
    assert code == 0
    assert entry["file"] == str(dicom) and entry["label"] in LABELS


def test_an_unusable_checkpoint_is_one_line_and_exit_2(tmp_path: Path, mdf: Mdf) -> None:
    code, out, err = mdf("classify", str(tmp_path), str(tmp_path / "a.png"))
    assert code == 2 and out == ""
    assert "manifest.json: missing" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def two_tile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint") / "two-tiles"
    return Path(build_tiny_checkpoint(directory, seed=3, labels=list(LABELS), vision_tiles=2))


def test_a_checkpoint_of_another_tile_count_than_the_workers_is_refused(
    two_tile_checkpoint: Path, tmp_path: Path, mdf: Mdf, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MDF_VISION_TILES, as the workers are configured: a checkpoint trained with another
    count is refused in one line, and served once the setting says its count."""
    checkpoint = two_tile_checkpoint
    Image.fromarray(fundus_image()).save(tmp_path / "eye.png")
    code, out, err = mdf("classify", str(checkpoint), str(tmp_path / "eye.png"))
    assert code == 2 and out == ""
    assert "trained with vision_tiles 2, served with 1" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("MDF_VISION_TILES", "2")
    code, entries, _ = classify(mdf, checkpoint, tmp_path / "eye.png")
    assert code == 0 and entries[0]["label"] in LABELS
