"""The widths of the text columns, read from the models, checked before writing.

PostgreSQL refuses a value longer than its ``VARCHAR(n)`` and any text holding a
NUL character, and refusing one row fails the whole statement: a chunk of 500
files, every night again. SQLite accepts both. So every text intake writes is
checked here first, on both engines alike, and a bad value rejects its own file or
manifest row only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import String

from db.lifecycle import ReasonCode
from db.models import Base

#: What a bad value is: too long for its column, or holding a character no column takes.
Problem = tuple[ReasonCode, str]


def width(model: type[Base], name: str) -> int | None:
    """The most characters column ``name`` of ``model`` holds (None: no limit)."""
    column_type = model.__table__.c[name].type
    return column_type.length if isinstance(column_type, String) else None


def field_problem(value: Any, *, limit: int | None, nul: ReasonCode, label: str) -> Problem | None:
    """Why ``value`` cannot be written where ``limit`` characters fit, or None when it can.

    A NUL character gets the caller's code ``nul`` (what holds it is malformed);
    ``label`` names the field in the reason.
    """
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        return nul, f"{label} holds a NUL character"
    if limit is not None and len(value) > limit:
        return (
            ReasonCode.FIELD_TOO_LONG,
            f"{label} is {len(value)} characters long, over its {limit}-character column",
        )
    return None


def first_problem(
    model: type[Base], values: Mapping[str, Any], *, nul: ReasonCode
) -> Problem | None:
    """The first of ``values`` (column name: value) that cannot be written, if any."""
    for name, value in values.items():
        problem = field_problem(value, limit=width(model, name), nul=nul, label=name)
        if problem is not None:
            return problem
    return None
