"""``mdf status``: how many images of each batch are in each status.

It reads the study_results view only, so the analyst role can run it too.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import ImageStatus
from db.views import STUDY_RESULTS

__all__ = ["status_counts"]


def status_counts(
    sessions: sessionmaker[Session], batch_name: str | None = None
) -> dict[str, dict[str, int]]:
    """Image counts per batch and status (every status present, zeros included)."""
    view = STUDY_RESULTS.c
    query = (
        select(view.batch, view.status, func.count())
        .group_by(view.batch, view.status)
        .order_by(view.batch)
    )
    if batch_name is not None:
        query = query.where(view.batch == batch_name)
    counts: dict[str, dict[str, int]] = {}
    with sessions() as session:
        for name, status, count in session.execute(query):
            row = counts.setdefault(name, {s.value: 0 for s in ImageStatus})
            row[ImageStatus(status).value] = count
    return counts
