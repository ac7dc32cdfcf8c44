"""Writing examined files into a batch: a few bulk statements per chunk, never history.

Images are identified by (sha256, frame): the same pixels under two names are one
image with both paths in ``image_paths``. The first registration of an image fixes
its metadata (its DICOM header, overridden by its manifest row). A later path of
the same content may only fill what is still empty; a manifest row that says
otherwise (another patient, study, laterality, label, text or source) is never
applied: it becomes a ``metadata_conflict`` rejection for that path, which the
operator sees with the other rejections, and the image keeps what it had.

Every insert skips rows that exist already (``scheduler.upsert``) and every fill is
one conditional UPDATE, so two intakes of one folder at once neither fail nor
double anything. Rows are inserted in the order of the walk, which is the same in
every intake of a folder (names sorted), so concurrent chunks take their locks in
the same order, and image ids follow the delivery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db import lifecycle
from db.lifecycle import ImageStatus, ReasonCode
from db.models import Image, ImagePath, Study, utcnow
from db.stored_path import to_stored
from db.upsert import insert_new
from mdf.imaging import ProbedFile
from scheduler.manifest import BadRow, ManifestRow
from scheduler.pseudonym import pseudonymise

log = structlog.get_logger(__name__)

Key = tuple[str, int]  # (sha256, frame)

#: The metadata a manifest row gives, by images column, and its name in the manifest.
DESCRIBED = {
    "patient_pseudonym": "patient_id",
    "study_key": "study_id",
    "study_id": "study_id",
    "laterality": "laterality",
    "clinical_text": "clinical_text",
    "label": "label",
    "data_source": "source",
}


@dataclass
class IngestReport:
    batch: str
    batch_id: int
    files: int = 0
    unchanged: int = 0
    images: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)

    def count(self, rejection: ReasonCode | None) -> None:
        """Count one new image, or one rejection with its code."""
        if rejection is None:
            self.images += 1
        else:
            self.rejected += 1
            self.rejected_by_code[rejection] = self.rejected_by_code.get(rejection, 0) + 1


@dataclass(frozen=True)
class Examined:
    """What intake learnt from one entry, without touching the database (picklable).

    ``path`` is where the delivery put it, ``real`` the file read (a link's target).
    """

    path: str
    real: str | None
    sha256: str
    size: int
    mtime_ns: int
    probed: ProbedFile | None = None
    code: ReasonCode | None = None
    reason: str | None = None


def _fill(row: dict[str, Any], description: Mapping[str, Any]) -> set[str]:
    """Fill a new row's empty fields from a later path's description, unless it conflicts.

    Returns the fields on which the description contradicts the row: then nothing is
    filled, as for a stored image (``Registrar._fill_stored``).
    """
    conflicting = {
        name
        for name, value in description.items()
        if row.get(name) is not None and row[name] != value
    }
    if not conflicting:
        row.update((name, value) for name, value in description.items() if row.get(name) is None)
    return conflicting


def marker(*parts: object) -> str:
    """A stable stand-in for the sha256 of a row that has no content of its own."""
    text = "\x00".join(str(part) for part in parts)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class _Conflict:
    item: Examined
    image_id: int | None  # None until the first image's id is known
    key: Key
    fields: set[str]


class Registrar:
    """Registers chunks of one batch; ``rows`` are the manifests' rows by real path."""

    def __init__(
        self,
        session: Session,
        batch_id: int,
        key: bytes,
        rows: Mapping[str, ManifestRow],
        report: IngestReport,
    ):
        self.session = session
        self.batch_id = batch_id
        self.key = key
        self.rows = rows
        self.report = report

    def register(self, examined: list[Examined]) -> None:
        known = self._known({item.sha256 for item in examined})
        new: dict[Key, dict[str, Any]] = {}
        described: list[tuple[Key, Examined, dict[str, Any]]] = []
        conflicts: dict[str, _Conflict] = {}
        seen: list[tuple[Key, Examined]] = []
        for item in examined:
            self.report.files += 1
            description = self._described(item)
            for frame in [p.frame for p in item.probed.images] if item.probed else [0]:
                key = (item.sha256, frame)
                seen.append((key, item))
                first = key not in new and key not in known
                if first:
                    new[key] = self._row(item, frame) | description
                if not description or known.get(key, (0, None))[1] is ImageStatus.REJECTED:
                    continue
                described.append((key, item, description))
                if key in new and not first and (fields := _fill(new[key], description)):
                    conflicts.setdefault(item.path, _Conflict(item, None, key, set()))
                    conflicts[item.path].fields |= fields
        study_ids = self._study_ids([*new.values(), *(values for _, _, values in described)])
        won = self._insert_images(new, study_ids)
        ids = {key: image_id for key, (image_id, _) in known.items()} | won
        ids |= self._ids(set(new) - set(won))  # registered meanwhile by another intake
        self.report.duplicates += len(seen) - len(won)
        for key in won:
            self.report.count(new[key].get("reason_code"))
        conflicts = {path: c for path, c in conflicts.items() if c.key in won}
        for key, item, values in described:
            if key not in won and (fields := self._fill_stored(ids[key], values, study_ids)):
                conflicts.setdefault(item.path, _Conflict(item, None, key, set()))
                conflicts[item.path].fields |= fields
        for conflict in conflicts.values():
            conflict.image_id = ids[conflict.key]
        self._record_conflicts(sorted(conflicts.values(), key=lambda c: c.item.path))
        self._record_paths(seen, ids)

    def reject_rows(self, bad_rows: Iterable[BadRow]) -> None:
        """Manifest rows that cannot be applied: recorded, keyed by manifest and line."""
        rows = []
        for row in bad_rows:
            manifest = to_stored(row.manifest)
            item = Examined(
                row.manifest, None, marker("manifest", manifest, row.line, row.file), 0, 0,
                code=row.code, reason=row.reason,
            )  # fmt: skip
            rows.append(self._row(item, 0) | {"source_path": f"{manifest}:{row.line}:{row.file}"})
        self._insert_rejections(rows)

    def _row(self, item: Examined, frame: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "batch_id": self.batch_id,
            "sha256": item.sha256,
            "frame": frame,
            "source_path": to_stored(item.real or item.path),
            "size_bytes": item.size,
        }
        probed = item.probed
        if probed is None:
            assert item.code is not None and item.reason is not None
            # Not the path: folder and file names often carry a patient's name or ID. The
            # content hash finds the row, whose source_path stays inside the database.
            log.info("file_rejected", sha256=item.sha256[:16], code=item.code, reason=item.reason)
            return row | lifecycle.rejected(item.code, item.reason)
        size = next(p for p in probed.images if p.frame == frame)
        # DICOM StudyInstanceUIDs are random or registry-rooted numbers naming no one,
        # and the images row keeps them for finding the study in PACS: they stay as
        # they are. A manifest's study id is the site's own (often an accession number
        # or built from the patient ID): _described pseudonymises it.
        return (
            row
            | lifecycle.registered()
            | {
                "file_kind": probed.kind,
                "width": size.width,
                "height": size.height,
                "sop_class_uid": probed.sop_class_uid,
                "modality": probed.modality,
                "study_uid": probed.study_uid,
                "series_uid": probed.series_uid,
                "sop_uid": probed.sop_uid,
                "laterality": probed.laterality,
                "clinical_text": probed.clinical_text,
                "patient_pseudonym": pseudonymise(probed.patient_id, self.key),
                "study_key": probed.study_uid,
            }
        )

    def _described(self, item: Examined) -> dict[str, Any]:
        """What this path's manifest row says of its image; it wins over the DICOM header."""
        row = self.rows.get(item.real) if item.real else None
        if row is None or item.probed is None:
            return {}
        values = {
            "patient_pseudonym": pseudonymise(row.patient_id, self.key),
            "laterality": row.laterality,
            "clinical_text": row.clinical_text,
            "label": row.label,
            "data_source": row.source,
            "study_key": pseudonymise(row.study_id, self.key),
        }
        return {name: value for name, value in values.items() if value is not None}

    def _known(self, shas: set[str]) -> dict[Key, tuple[int, ImageStatus]]:
        query = select(Image.id, Image.sha256, Image.frame, Image.status).where(
            Image.sha256.in_(shas)
        )
        return {(sha, frame): (i, status) for i, sha, frame, status in self.session.execute(query)}

    def _ids(self, keys: set[Key]) -> dict[Key, int]:
        shas = {sha for sha, _ in keys}
        return {key: i for key, (i, _) in self._known(shas).items() if key in keys}

    def _insert_images(
        self, new: dict[Key, dict[str, Any]], study_ids: dict[str, int]
    ) -> dict[Key, int]:
        """Insert the new images; returns the ids of those this intake registered first."""
        if not new:
            return {}
        rows = []
        for row in map(dict, new.values()):
            row["study_id"] = study_ids.get(row.pop("study_key", None) or "")
            rows.append(row)
        statement = insert_new(self.session, Image, ["sha256", "frame"]).returning(
            Image.id, Image.sha256, Image.frame
        )
        return {(sha, frame): i for i, sha, frame in self.session.execute(statement, rows)}

    def _insert_rejections(self, rows: list[dict[str, Any]]) -> None:
        """Insert rejection rows not recorded yet, counting those this intake added."""
        if not rows:
            return
        statement = insert_new(self.session, Image, ["sha256", "frame"]).returning(Image.sha256)
        added = set(self.session.scalars(statement, rows))
        for row in rows:
            if row["sha256"] in added:
                self.report.count(row["reason_code"])

    def _study_ids(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Ids of the studies these rows name, creating the missing ones.

        A new study's patient is the one its first row names.
        """
        patients: dict[str, str | None] = {}
        for row in rows:
            if row.get("study_key"):
                patients.setdefault(row["study_key"], row.get("patient_pseudonym"))
        if not patients:
            return {}
        self.session.execute(
            insert_new(self.session, Study, ["study_key"]),
            [
                {"study_key": key, "patient_pseudonym": pseudonym}
                for key, pseudonym in patients.items()
            ],
        )
        wanted = list(patients)
        query = select(Study.study_key, Study.id).where(Study.study_key.in_(wanted))
        return {key: study_id for key, study_id in self.session.execute(query)}

    def _fill_stored(
        self, image_id: int, values: dict[str, Any], study_ids: dict[str, int]
    ) -> set[str]:
        """Fill a stored image's empty fields from a manifest row, in one conditional UPDATE.

        Returns the fields on which the row contradicts the image: then nothing is written.
        """
        values = dict(values)
        if "study_key" in values:
            values["study_id"] = study_ids[values.pop("study_key")]
        columns = {name: getattr(Image, name) for name in values}
        agrees = [or_(columns[n].is_(None), columns[n] == v) for n, v in values.items()]
        filled = self.session.execute(
            update(Image)
            .where(Image.id == image_id, *agrees)
            .values({n: func.coalesce(columns[n], v) for n, v in values.items()})
            .execution_options(synchronize_session=False)
        )
        if filled.rowcount:
            return set()
        current = self.session.execute(select(*columns.values()).where(Image.id == image_id)).one()
        return {
            name
            for name, stored in zip(values, current, strict=True)
            if stored is not None and stored != values[name]
        } or set(values)

    def _record_conflicts(self, conflicts: list[_Conflict]) -> None:
        rows = []
        for conflict in conflicts:
            item, row = conflict.item, self.rows[conflict.item.real or ""]
            fields = ", ".join(
                dict.fromkeys(DESCRIBED[name] for name in DESCRIBED if name in conflict.fields)
            )
            reason = (
                f"manifest line {row.line} gives another {fields} than image {conflict.image_id}, "
                "registered first with the same content; the image keeps its first metadata"
            )
            code = ReasonCode.METADATA_CONFLICT
            sha = marker(code, item.sha256, to_stored(item.path))
            rejection = Examined(item.path, None, sha, item.size, 0, code=code, reason=reason)
            rows.append(self._row(rejection, 0) | {"source_path": to_stored(item.path)})
        self._insert_rejections(rows)

    def _record_paths(self, seen: list[tuple[Key, Examined]], images: dict[Key, int]) -> None:
        """Record where each image was seen; a path seen before only gets its new stat."""
        stats = {(images[key], to_stored(item.path)): item for key, item in seen}
        recorded = self.session.scalars(
            select(ImagePath).where(ImagePath.path.in_({path for _, path in stats}))
        )
        for row in recorded:
            item = stats.pop((row.image_id, row.path), None)
            if item is not None:
                row.size_bytes, row.mtime_ns = item.size, item.mtime_ns
        if stats:
            now = utcnow()
            self.session.execute(
                insert_new(self.session, ImagePath, ["image_id", "path"]),
                [
                    {"image_id": image_id, "batch_id": self.batch_id, "path": path,
                     "size_bytes": item.size, "mtime_ns": item.mtime_ns, "seen_at": now}
                    for (image_id, path), item in sorted(stats.items())
                ],
            )  # fmt: skip
