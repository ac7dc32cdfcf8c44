"""``mdf results``: rows of the study_results view, filtered, as a table, CSV, JSON or Parquet.

One mapping of columns to types (``COLUMNS``) drives the query and every writer, so all
formats carry the same rows under the same names and types. The source path and the
study key are left out on purpose: file and folder names, and the study ids some
manifests build, often carry a patient's name or ID, and these files travel.
``study_id`` groups a study's images instead; the view itself keeps both for analysts
who query the database.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import ImageStatus
from mdf.terminal import csv_cell, printable

Row = dict[str, Any]

COLUMNS: dict[str, sa.types.TypeEngine[Any]] = {
    "image_id": sa.Integer(),
    "batch": sa.String(),
    "study_id": sa.Integer(),
    "patient_pseudonym": sa.String(),
    "frame": sa.Integer(),
    "laterality": sa.String(),
    "status": sa.Enum(*ImageStatus, name="image_status"),  # PostgreSQL compares enum to enum
    "reason_code": sa.String(),
    "reason": sa.String(),
    "label": sa.String(),
    "probability": sa.Float(),
    "text_agrees": sa.Boolean(),
    "model_version": sa.String(),
    "registered_at": sa.DateTime(timezone=True),
    "predicted_at": sa.DateTime(timezone=True),
    "generated_text": sa.String(),
}

#: The view as the exports and the report read it.
STUDY_RESULTS = sa.table("study_results", *(sa.column(n, type_) for n, type_ in COLUMNS.items()))


@dataclass(frozen=True)
class Filters:
    batch: str | None = None
    since: datetime | None = None  # registered at or after
    label: str | None = None
    limit: int | None = None


def parse_since(text: str) -> datetime:
    """An ISO date or date and time, UTC unless it carries an offset (an argparse type)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or date and time (2026-11-01, 2026-11-01T22:00+01:00)"
        ) from None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def fetch(session: Session, filters: Filters) -> list[Row]:
    """The filtered rows of study_results, oldest image first."""
    view = STUDY_RESULTS.c
    query = sa.select(*(view[name] for name in COLUMNS)).order_by(view.image_id)
    if filters.batch is not None:
        query = query.where(view.batch == filters.batch)
    if filters.since is not None:
        query = query.where(view.registered_at >= filters.since)
    if filters.label is not None:
        query = query.where(view.label == filters.label)
    return [
        {name: as_utc(v) if isinstance(v, datetime) else v for name, v in row.items()}
        for row in session.execute(query.limit(filters.limit)).mappings()
    ]


def write_table(rows: Sequence[Row], stream: IO[str]) -> None:
    """A fixed-width summary for the terminal; other formats carry every column."""
    stream.write(
        f"{'image':>6}  {'eye':<3}  {'status':<10}  {'label':<10}  {'prob':>5}  "
        f"{'model':<16}  text / reason\n"
    )
    for row in rows:
        probability = row["probability"]
        shown = f"{probability:.2f}" if probability is not None else "-"
        detail = re.sub(r"\s+", " ", row["reason"] or row["generated_text"] or "").strip()
        line = (
            f"{row['image_id']:>6}  {row['laterality'] or '-':<3}  {row['status']:<10}  "
            f"{row['label'] or '-':<10}  {shown:>5}  {row['model_version'] or '-':<16}  "
            f"{detail}"
        )
        stream.write(printable(line) + "\n")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def write_csv(rows: Sequence[Row], stream: IO[str]) -> None:
    writer = csv.DictWriter(stream, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows({name: csv_cell(_plain(value)) for name, value in row.items()} for row in rows)


def write_json(rows: Sequence[Row], stream: IO[str]) -> None:
    json.dump([{n: _plain(v) for n, v in row.items()} for row in rows], stream, indent=2)
    stream.write("\n")


def write_parquet(rows: Sequence[Row], path: Path) -> None:
    """Typed columns from ``COLUMNS``, so a column with no value yet keeps its type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {
        int: pa.int64(),
        float: pa.float64(),
        bool: pa.bool_(),
        str: pa.string(),
        datetime: pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, arrow[type_.python_type]) for name, type_ in COLUMNS.items()])
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), path)


TEXT_WRITERS: dict[str, Callable[[Sequence[Row], IO[str]], None]] = {
    "table": write_table,
    "csv": write_csv,
    "json": write_json,
}
FORMATS = (*TEXT_WRITERS, "parquet")


def export(rows: Sequence[Row], fmt: str, out: Path | None, stdout: IO[str]) -> None:
    """Write ``rows`` in ``fmt`` to ``out``, or to ``stdout`` when no file is named."""
    if fmt == "parquet":
        if out is None:
            raise ValueError("parquet is a binary format: name a file with --out")
        write_parquet(rows, out)
    elif out is None:
        TEXT_WRITERS[fmt](rows, stdout)
    else:
        with out.open("w", encoding="utf-8", newline="") as stream:
            TEXT_WRITERS[fmt](rows, stream)
