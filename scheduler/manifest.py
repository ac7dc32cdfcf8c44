"""``manifest.csv``: what a screening program tells us about the files in a folder.

Columns: file, patient_id, study_id, laterality, clinical_text, label, source. Only
``file`` is required; it is relative to the manifest's folder and must stay inside
the inbox. A row naming a missing file or a path outside the inbox is reported
back as a :class:`BadRow` so intake records it as a rejection.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from db.lifecycle import ReasonCode

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("file", "patient_id", "study_id", "laterality", "clinical_text", "label", "source")


@dataclass(frozen=True)
class ManifestRow:
    patient_id: str | None = None
    study_id: str | None = None
    laterality: str | None = None
    clinical_text: str | None = None
    label: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class BadRow:
    manifest: Path
    line: int
    file: str
    code: ReasonCode
    reason: str


def normalise_laterality(value: str | None) -> str | None:
    if not value:
        return None
    side = value.strip().upper()[:1]
    return side if side in ("L", "R") else None


def read_manifest(path: Path, inbox: Path) -> tuple[dict[Path, ManifestRow], list[BadRow]]:
    """Rows keyed by the resolved path of the file they describe."""
    rows: dict[Path, ManifestRow] = {}
    bad: list[BadRow] = []
    root = inbox.resolve()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "file" not in reader.fieldnames:
            return rows, [
                BadRow(path, 1, "", ReasonCode.BAD_MANIFEST, "manifest has no 'file' column")
            ]
        for line, record in enumerate(reader, start=2):
            name = (record.get("file") or "").strip()
            target = (path.parent / name).resolve()
            if not name:
                problem = (ReasonCode.BAD_MANIFEST, "manifest row names no file")
            elif not target.is_relative_to(root):
                problem = (ReasonCode.OUTSIDE_INBOX, "manifest names a path outside the inbox")
            elif not target.is_file():
                problem = (ReasonCode.MISSING_FILE, "manifest names a file that does not exist")
            else:
                rows[target] = ManifestRow(
                    **{column: (record.get(column) or "").strip() or None for column in COLUMNS[1:]}
                )
                continue
            bad.append(BadRow(path, line, name, *problem))
    return rows, bad
