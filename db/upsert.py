"""``INSERT ... ON CONFLICT DO NOTHING`` on both engines: writes that may race or repeat.

The unique constraints decide who writes a row first: two intakes of one folder at
once (images by content, paths per image, studies by key, batches by name) and two
deliveries of one chunk (a prediction per image and model version). The other writer
skips the row instead of failing its whole statement.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Base


def insert_new(session: Session, model: type[Base], index_elements: Sequence[str]) -> Insert:
    """An INSERT into ``model`` that skips rows whose ``index_elements`` already exist."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing(index_elements=index_elements)
    raise NotImplementedError(f"INSERT ... ON CONFLICT is not implemented for {dialect}")
