"""``mdf labels import``: ground truth for images already registered by intake.

A labels file is CSV with a ``label`` column and one key: ``image`` (an image id,
a file's sha256, or a file path, relative to the CSV's folder or absolute) or
``study`` (a study key: every image of the study). Optional: ``mask`` (PNG paths
per segmentation channel, ";"-separated, relative to the CSV's folder) and
``source`` (dataset or site). Rows that match no image are reported, not fatal.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImagePath, Study

SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class LabelReport:
    rows: int = 0
    images: int = 0
    unmatched: list[str] = field(default_factory=list)


def _image_ids(session: Session, key: str, folder: Path, by_study: bool) -> list[int]:
    if by_study:
        query = select(Image.id).join(Study).where(Study.study_key == key)
    elif key.isdigit():
        query = select(Image.id).where(Image.id == int(key))
    elif SHA256.match(key):
        query = select(Image.id).where(Image.sha256 == key)
    else:
        path = str((folder / key).resolve())
        query = select(ImagePath.image_id).where(ImagePath.path == path)
    return list(dict.fromkeys(session.scalars(query)))


def import_labels(path: Path, sessions: sessionmaker[Session]) -> LabelReport:
    report = LabelReport()
    folder = path.resolve().parent
    with path.open(newline="", encoding="utf-8-sig") as handle, sessions.begin() as session:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "label" not in columns or not columns & {"image", "study"}:
            raise ValueError(f"{path}: needs a 'label' column and an 'image' or 'study' column")
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            by_study = not row.get("image")
            key = (row.get("study") if by_study else row.get("image")) or ""
            label = (row.get("label") or "").strip()
            ids = _image_ids(session, key.strip(), folder, by_study) if key.strip() else []
            if not ids or not label:
                reason = "no label" if not label else "matches no registered image"
                report.unmatched.append(f"line {line}: {key or '(no key)'}: {reason}")
                continue
            values: dict[str, str] = {"label": label}
            if row.get("mask"):
                channels = [str((folder / p.strip()).resolve()) for p in row["mask"].split(";")]
                values["mask_path"] = ";".join(channels)
            if row.get("source"):
                values["data_source"] = row["source"].strip()
            session.execute(update(Image).where(Image.id.in_(ids)).values(values))
            report.images += len(ids)
    return report
