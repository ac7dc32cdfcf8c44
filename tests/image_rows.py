"""Images, versions and predictions in the database, as the tests set and read them."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from db.lifecycle import ImageStatus
from db.model_versions import register_version
from db.models import Batch, Image, Prediction, utcnow


def add_images(
    sessions: sessionmaker[Session],
    paths: list[Path],
    *,
    status: ImageStatus = ImageStatus.QUEUED,
    attempts: int = 0,
    batch_name: str = "night",
    age_s: float = 0,
) -> list[int]:
    """One image per path, in ``status``, which it entered ``age_s`` ago."""
    changed = utcnow() - timedelta(seconds=age_s)
    with sessions.begin() as session:
        batch = session.scalar(sa.select(Batch).where(Batch.name == batch_name))
        batch = batch or Batch(name=batch_name, source="/inbox")
        images = [
            Image(
                batch=batch,
                sha256=hashlib.sha256(f"{path}:{status}".encode()).hexdigest(),
                source_path=str(path),
                status=status,
                attempts=attempts,
                status_changed_at=changed,
            )
            for path in paths
        ]
        session.add_all(images)
        session.flush()
        return [image.id for image in images]


def promote(sessions: sessionmaker[Session], name: str, path: Path) -> int:
    """Register a checkpoint as a version and promote it, as the trainer does."""
    with sessions.begin() as session:
        version = register_version(
            session,
            path=path,
            manifest_sha256=name.ljust(64, "0")[:64],
            labels=["acquired", "inherited"],
            name=name,
        )
        model_versions.promote(session, version, reason="a test promotes it")
        return version.id


def statuses(sessions: sessionmaker[Session]) -> dict[int, ImageStatus]:
    with sessions() as session:
        return dict(session.execute(sa.select(Image.id, Image.status)).all())


def image_reasons(sessions: sessionmaker[Session]) -> dict[int, tuple[str | None, str | None]]:
    """Each image's reason code and reason (None, None where it has none)."""
    with sessions() as session:
        rows = session.execute(sa.select(Image.id, Image.reason_code, Image.reason))
        return {image_id: (code, reason) for image_id, code, reason in rows}


def predictions_per_image(sessions: sessionmaker[Session]) -> dict[int, int]:
    with sessions() as session:
        rows = session.execute(
            sa.select(Prediction.image_id, sa.func.count()).group_by(Prediction.image_id)
        )
        return dict(rows.all())
