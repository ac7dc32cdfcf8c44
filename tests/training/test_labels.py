"""Labels import keyed by path, sha256, image id or study; masks from the synthetic generator."""

from __future__ import annotations

import csv
from pathlib import Path

import redis
from sqlalchemy import select

from db.models import Image
from mdf.settings import Settings
from mdf.synthetic.delivery import write_dataset
from scheduler.service import Scheduler
from training.labels import import_labels


def test_synthetic_masks_import_onto_ingested_images(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    inbox = write_dataset(tmp_path / "inbox", 6, seed=2, size=96)
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night")

    report = import_labels(tmp_path / "inbox-masks" / "masks.csv", scheduler.sessions)
    assert (report.rows, report.images, report.unmatched) == (6, 6, [])
    with scheduler.sessions() as session:
        images = session.scalars(select(Image)).all()
    assert len(images) == 6
    for image in images:
        vessels, lesions = image.mask_path.split(";")
        assert Path(vessels).is_file() and vessels.endswith("_vessel.png")
        assert Path(lesions).is_file() and image.label in ("acquired", "inherited")


def test_keys_and_unmatched_rows(settings: Settings, broker: redis.Redis, tmp_path: Path) -> None:
    inbox = write_dataset(tmp_path / "inbox", 4, seed=3, size=96, write_masks=False)
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night")
    with scheduler.sessions() as session:
        first, second, third, _ = session.scalars(select(Image).order_by(Image.id)).all()
        third_study = third.study.study_key
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "study", "label", "source"])
        writer.writerow([str(first.id), "", "glaucoma", "clinic"])
        writer.writerow([second.sha256, "", "stargardt", ""])
        writer.writerow(["", third_study, "best_disease", ""])
        writer.writerow(["nowhere.jpg", "", "amd", ""])
        writer.writerow([str(first.id), "", "", ""])

    report = import_labels(labels, scheduler.sessions)
    assert report.rows == 5 and len(report.unmatched) == 2
    assert "matches no registered image" in report.unmatched[0]
    assert "no label" in report.unmatched[1]
    with scheduler.sessions() as session:
        assert session.get(Image, first.id).label == "glaucoma"
        assert session.get(Image, first.id).data_source == "clinic"
        assert session.get(Image, second.id).label == "stargardt"
        assert session.get(Image, third.id).label == "best_disease"
