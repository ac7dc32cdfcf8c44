"""The README's demo path, as ``make demo`` runs it, on a fresh folder and a cold model cache."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Image, ImagePath, ImageStatus, ModelVersion, Prediction
from db.session import session_factory
from mdf.synthetic.bad_files import BAD_FILES

REPO = Path(__file__).resolve().parents[1]
NIGHT_IMAGES = 6


def demo(root: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``make demo`` at a test's size; it must succeed."""
    small = ["--history-images", "16", "--epochs", "1", "--night-images", str(NIGHT_IMAGES)]
    result = subprocess.run(
        [sys.executable, "scripts/demo.py", "--root", str(root), "--cache", str(cache), *small],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_the_demo_trains_then_classifies_its_night_and_rejects_exactly_the_bad_files(
    tmp_path: Path,
) -> None:
    root, cache = tmp_path / "demo", tmp_path / "cache"
    result = demo(root, cache)

    assert "Model: trained in" in result.stdout
    assert f"{NIGHT_IMAGES} classified, {len(BAD_FILES)} rejected, 0 failed" in result.stdout
    inbox = root / "inbox"
    delivered = {p for p in inbox.rglob("*") if p.is_file() and p.name != "manifest.csv"}
    sessions = session_factory(f"sqlite:///{root / 'data' / 'mdf.sqlite3'}")
    with sessions() as session:
        promoted = session.scalars(select(ModelVersion).where(ModelVersion.is_promoted)).one()
        outcome, labelled = {}, {}
        for path, status, code, reason, prediction in session.execute(
            select(ImagePath.path, Image.status, Image.reason_code, Image.reason, Prediction)
            .join(Image, ImagePath.image_id == Image.id)
            .outerjoin(Prediction, Prediction.image_id == Image.id)
        ):
            assert (status == ImageStatus.DONE) == (prediction is not None)
            if prediction is not None:
                assert prediction.model_version_id == promoted.id
                labelled[Path(path)] = prediction.label
            assert (status == ImageStatus.REJECTED) == bool(code and reason)
            outcome[Path(path)] = status, code

    assert Path(promoted.path).is_relative_to(cache)  # the trained checkpoint, kept for next time
    assert set(outcome) == delivered
    rejected = {path: code for path, (status, code) in outcome.items() if status == "rejected"}
    assert rejected == {inbox / name: code for name, code in BAD_FILES.items()}
    assert all(
        status == ImageStatus.DONE for path, (status, _) in outcome.items() if path not in rejected
    )
    # The accuracy the demo prints is the night's manifest against the database.
    with (inbox / "manifest.csv").open(newline="") as f:
        truth = {inbox / row["file"]: row["label"] for row in csv.DictReader(f) if row["label"]}
    right = sum(labelled.get(path) == label for path, label in truth.items())
    printed = re.search(r"Demo night: (\d+) of (\d+) images", result.stdout)
    assert printed is not None and printed.groups() == (str(right), str(len(truth)))
    assert len(truth) == NIGHT_IMAGES


@pytest.mark.slow
def test_a_second_demo_serves_the_model_the_first_one_trained(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    demo(tmp_path / "first", cache)
    (entry,) = cache.iterdir()

    again = demo(tmp_path / "second", cache)

    assert "Model: reused the model cached in" in again.stdout
    assert "Training a tiny model" not in again.stdout
    assert [path.name for path in cache.iterdir()] == [entry.name]
    sessions = session_factory(f"sqlite:///{tmp_path / 'second' / 'data' / 'mdf.sqlite3'}")
    with sessions() as session:
        promoted = session.scalars(select(ModelVersion).where(ModelVersion.is_promoted)).one()
    assert Path(promoted.path) == entry / "checkpoint"
