"""``manifest.csv``: what a screening program tells us about the files in a folder.

Columns: file, patient_id, study_id, laterality, clinical_text, label, source. Only
``file`` is required; it is relative to the manifest's folder and must stay inside
the inbox. A manifest is hostile text like any file: one that is not UTF-8 or not
CSV, or has no ``file`` column, is refused whole (``Rejection``, unreadable_manifest)
while its folder's files are still read. A row that cannot be applied (no file, a
path outside the inbox or missing, a field too long for its column or holding a
NUL, an unknown laterality, a second row for a file already described otherwise) is
a :class:`BadRow`, rejected alone, so intake records it with its code.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from db.columns import field_problem, width
from db.lifecycle import ReasonCode
from db.models import Image
from mdf.imaging import Rejection

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("file", "patient_id", "study_id", "laterality", "clinical_text", "label", "source")
#: The images column each described field is written to (ids are pseudonymised first).
_WRITTEN_TO = {"clinical_text": "clinical_text", "label": "label", "source": "data_source"}
_SIDES = {"L": "L", "LEFT": "L", "OS": "L", "R": "R", "RIGHT": "R", "OD": "R"}


@dataclass(frozen=True)
class ManifestRow:
    """What one row says of its file; ids are raw here: pseudonymise, never log them."""

    line: int = 0
    patient_id: str | None = None
    study_id: str | None = None
    laterality: str | None = None  # "L" or "R"
    clinical_text: str | None = None
    label: str | None = None
    source: str | None = None

    def same_description(self, other: ManifestRow) -> bool:
        return {**vars(self), "line": 0} == {**vars(other), "line": 0}


@dataclass(frozen=True)
class BadRow:
    manifest: str
    line: int
    file: str
    code: ReasonCode
    reason: str


def normalise_laterality(value: str | None) -> str | None:
    """ "L" or "R" for the spellings screening programs use (L, left, OS; R, right, OD).

    Raises ValueError for anything else that is not blank.
    """
    if not value or not value.strip():
        return None
    try:
        return _SIDES[value.strip().upper()]
    except KeyError:
        raise ValueError(value) from None


@dataclass
class Manifests:
    """Every manifest of a delivery: rows keyed by the real path of the file they describe."""

    root: Path
    rows: dict[str, ManifestRow] = field(default_factory=dict)
    bad: list[BadRow] = field(default_factory=list)

    def add(self, path: str, data: bytes) -> None:
        """Read one manifest's content; raise `Rejection` when it is unusable as a whole."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise Rejection(
                ReasonCode.UNREADABLE_MANIFEST,
                f"the manifest is not UTF-8 text (byte 0x{data[error.start]:02x} at "
                f"offset {error.start}); none of its rows applied",
            ) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            records = list(reader)
        except csv.Error as error:
            raise Rejection(
                ReasonCode.UNREADABLE_MANIFEST,
                f"the manifest is not valid CSV at line {reader.line_num} ({error}); "
                "none of its rows applied",
            ) from None
        if reader.fieldnames is None or "file" not in reader.fieldnames:
            raise Rejection(ReasonCode.UNREADABLE_MANIFEST, "the manifest has no 'file' column")
        folder = os.path.dirname(path)
        for line, record in enumerate(records, start=2):
            self._add_row(path, folder, line, record)

    def _add_row(self, path: str, folder: str, line: int, record: dict[str, str | None]) -> None:
        values = {column: _text(record.get(column)) for column in COLUMNS}
        name = values.pop("file") or ""
        try:
            target, described = self._described(folder, name, line, values)
        except Rejection as problem:
            self.bad.append(BadRow(path, line, name, problem.code, problem.reason))
            return
        first = self.rows.setdefault(target, described)
        if first is not described and not first.same_description(described):
            self.bad.append(
                BadRow(
                    path,
                    line,
                    name,
                    ReasonCode.METADATA_CONFLICT,
                    f"describes a file already described by manifest line {first.line} "
                    "otherwise; the first row is kept",
                )
            )

    def _described(
        self, folder: str, name: str, line: int, values: dict[str, str | None]
    ) -> tuple[str, ManifestRow]:
        """The real path a row names and what it says, or raise `Rejection`."""
        for column, value in [("file", name), *values.items()]:
            written_to = _WRITTEN_TO.get(column)
            limit = width(Image, written_to) if written_to else None
            problem = field_problem(value, limit=limit, nul=ReasonCode.BAD_MANIFEST, label=column)
            if problem is not None:
                raise Rejection(*problem)
        if not name:
            raise Rejection(ReasonCode.BAD_MANIFEST, "manifest row names no file")
        target = os.path.realpath(os.path.join(folder, name))
        if not Path(target).is_relative_to(self.root):
            raise Rejection(ReasonCode.OUTSIDE_INBOX, "manifest names a path outside the inbox")
        if not os.path.isfile(target):
            raise Rejection(ReasonCode.MISSING_FILE, "manifest names a file that does not exist")
        try:
            values["laterality"] = normalise_laterality(values["laterality"])
        except ValueError:
            raise Rejection(
                ReasonCode.UNKNOWN_LATERALITY,
                "laterality is none of L, R, left, right, OS, OD; the row is not applied",
            ) from None
        return target, ManifestRow(line, **values)


def _text(value: str | None) -> str | None:
    """A cell's stripped text; None when blank or absent."""
    return (value or "").strip() or None
