"""``mdf status``: how many images of each batch are in each status."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Image, ImageStatus

__all__ = ["status_counts"]


def status_counts(
    sessions: sessionmaker[Session], batch_name: str | None = None
) -> dict[str, dict[str, int]]:
    """Image counts per batch and status (every status present, zeros included)."""
    query = (
        select(Batch.name, Image.status, func.count(Image.id))
        .join(Image, Image.batch_id == Batch.id)
        .group_by(Batch.name, Image.status)
        .order_by(Batch.name)
    )
    if batch_name is not None:
        query = query.where(Batch.name == batch_name)
    counts: dict[str, dict[str, int]] = {}
    with sessions() as session:
        for name, status, count in session.execute(query):
            row = counts.setdefault(name, {s.value: 0 for s in ImageStatus})
            row[ImageStatus(status).value] = count
    return counts
