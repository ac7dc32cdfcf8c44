"""``mdf results`` and ``mdf outcomes``: rows of the analysts' views, filtered, as a table,
CSV, JSON or Parquet.

``mdf results`` reads study_results (one row per image), ``mdf outcomes``
screening_outcomes (one decision per patient and study). Each view's columns and types
(``db.views``) drive the query and every writer, so all formats carry the same rows
under the same names and types. Neither view has a source path or a study key: file and
folder names, and the study ids some manifests build, often carry a patient's name or
ID, and these files travel; ``study_id`` (``study``) groups a study's images instead.
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

from db.views import SCREENING_OUTCOMES, STUDY_RESULTS
from mdf.terminal import csv_cell, printable

Row = dict[str, Any]
View = sa.TableClause

#: Each view's rows in a stable order: images by id; studies by batch, then study.
ORDER = {STUDY_RESULTS.name: ("image_id",), SCREENING_OUTCOMES.name: ("batch", "study")}


def columns(view: View) -> dict[str, sa.types.TypeEngine[Any]]:
    return {column.name: column.type for column in view.columns}


@dataclass(frozen=True)
class Filters:
    """Each set filter is a condition on the view's column of the same name."""

    batch: str | None = None
    since: datetime | None = None  # registered at or after (study_results)
    label: str | None = None  # study_results
    decision: str | None = None  # screening_outcomes
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


def fetch(session: Session, filters: Filters, view: View = STUDY_RESULTS) -> list[Row]:
    """The filtered rows of ``view``, in its ``ORDER``."""
    c = view.c
    query = sa.select(*view.columns).order_by(*(c[name] for name in ORDER[view.name]))
    for name in ("batch", "label", "decision"):
        if (value := getattr(filters, name)) is not None:
            query = query.where(c[name] == value)
    if filters.since is not None:
        query = query.where(c.registered_at >= filters.since)
    return [
        {name: as_utc(v) if isinstance(v, datetime) else v for name, v in row.items()}
        for row in session.execute(query.limit(filters.limit)).mappings()
    ]


def write_table(rows: Sequence[Row], stream: IO[str]) -> None:
    """A fixed-width summary of study_results for the terminal; other formats carry every
    column."""
    stream.write(
        f"{'image':>6}  {'eye':<3}  {'status':<10}  {'label':<10}  {'prob':>5}  "
        f"{'model':<16}  text / reason\n"
    )
    for row in rows:
        probability = row["probability"]
        shown = f"{probability:.2f}" if probability is not None else "-"
        label = "ungradable" if row["gradable"] is False else row["label"] or "-"
        detail = re.sub(
            r"\s+", " ", row["reason"] or row["quality_reason"] or row["generated_text"] or ""
        ).strip()
        line = (
            f"{row['image_id']:>6}  {row['laterality'] or '-':<3}  {row['status']:<10}  "
            f"{label:<10}  {shown:>5}  {row['model_version'] or '-':<16}  {detail}"
        )
        stream.write(printable(line) + "\n")


def write_outcomes_table(rows: Sequence[Row], stream: IO[str]) -> None:
    """A fixed-width summary of screening_outcomes: a pseudonym's first 12 characters are
    enough to tell the patients of a night apart on a screen."""
    stream.write(
        f"{'patient':<12}  {'study':>6}  {'decision':<8}  {'right eye':<13}  "
        f"{'left eye':<13}  reason\n"
    )
    for row in rows:
        line = (
            f"{(row['patient_pseudonym'] or '-')[:12]:<12}  {row['study']:>6}  "
            f"{row['decision']:<8}  {row['right_eye']:<13}  {row['left_eye']:<13}  "
            f"{row['reason']}"
        )
        stream.write(printable(line) + "\n")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def write_csv(rows: Sequence[Row], stream: IO[str], names: Sequence[str]) -> None:
    writer = csv.DictWriter(stream, fieldnames=list(names))
    writer.writeheader()
    writer.writerows({name: csv_cell(_plain(value)) for name, value in row.items()} for row in rows)


def write_json(rows: Sequence[Row], stream: IO[str], names: Sequence[str]) -> None:
    json.dump([{n: _plain(v) for n, v in row.items()} for row in rows], stream, indent=2)
    stream.write("\n")


def write_parquet(rows: Sequence[Row], path: Path, view: View) -> None:
    """Typed columns from the view's, so a column with no value yet keeps its type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {
        int: pa.int64(),
        float: pa.float64(),
        bool: pa.bool_(),
        str: pa.string(),
        datetime: pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, arrow[type_.python_type]) for name, type_ in columns(view).items()])
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), path)


TABLES: dict[str, Callable[[Sequence[Row], IO[str]], None]] = {
    STUDY_RESULTS.name: write_table,
    SCREENING_OUTCOMES.name: write_outcomes_table,
}
TEXT_WRITERS: dict[str, Callable[[Sequence[Row], IO[str], Sequence[str]], None]] = {
    "csv": write_csv,
    "json": write_json,
}
FORMATS = ("table", *TEXT_WRITERS, "parquet")


def export(
    rows: Sequence[Row], fmt: str, out: Path | None, stdout: IO[str], view: View = STUDY_RESULTS
) -> None:
    """Write ``rows`` of ``view`` in ``fmt`` to ``out``, or to ``stdout`` when no file is
    named."""
    if fmt == "parquet":
        if out is None:
            raise ValueError("parquet is a binary format: name a file with --out")
        write_parquet(rows, out, view)
        return

    def write(stream: IO[str]) -> None:
        if fmt == "table":
            TABLES[view.name](rows, stream)
        else:
            TEXT_WRITERS[fmt](rows, stream, list(columns(view)))

    if out is None:
        write(stdout)
    else:
        with out.open("w", encoding="utf-8", newline="") as stream:
            write(stream)
