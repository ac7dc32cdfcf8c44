"""Intake: a delivered folder becomes registered images and recorded rejections.

Every file found under the folder ends as an ``images`` row: ``registered`` (one
row per frame) or ``rejected`` with a specific reason. Registration is idempotent:
images are identified by the sha256 of their file and their frame number, so the
same night ingested twice adds nothing and the same pixels under two names are one
image with both paths in ``image_paths``. A path already seen with the same size
and modification time is not read again. Input files are only ever read.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import ImageStatus, ReasonCode
from db.models import Batch, Image, ImagePath, Study, utcnow
from mdf.imaging import ProbedFile, Rejection, probe
from mdf.settings import Settings
from scheduler.manifest import (
    MANIFEST_NAME,
    BadRow,
    ManifestRow,
    normalise_laterality,
    read_manifest,
)
from scheduler.pseudonym import pseudonymise

log = structlog.get_logger(__name__)

#: Files registered per transaction: large enough to amortise the round trips.
WRITE_CHUNK = 500


@dataclass(frozen=True)
class Examined:
    """What intake learnt from one file, without touching the database (picklable)."""

    path: Path
    sha256: str
    size: int
    mtime_ns: int
    probed: ProbedFile | None = None
    code: ReasonCode | None = None
    reason: str | None = None


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


def default_batch_name(folder: Path) -> str:
    return f"{folder.resolve().name}-{datetime.now(UTC):%Y-%m-%d}"


def discover(folder: Path) -> Iterator[Path]:
    """Every file below ``folder`` (manifests aside), in a stable order."""
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        for name in sorted(files):
            if name != MANIFEST_NAME:
                yield Path(directory) / name


def examine(path: Path, max_pixels: int, min_side: int) -> Examined:
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as error:
        marker = hashlib.sha256(f"unreadable:{path}".encode()).hexdigest()
        return Examined(
            path,
            marker,
            0,
            0,
            code=ReasonCode.UNREADABLE,
            reason=f"cannot read: {error.strerror}",
        )
    try:
        probed = probe(path, max_pixels=max_pixels, min_side=min_side, data=data)
    except Rejection as rejection:
        digest = hashlib.sha256(data).hexdigest()
        return Examined(
            path,
            digest,
            stat.st_size,
            stat.st_mtime_ns,
            code=rejection.code,
            reason=rejection.reason,
        )
    return Examined(path, probed.sha256, stat.st_size, stat.st_mtime_ns, probed=probed)


@contextmanager
def examining(paths: list[Path], settings: Settings) -> Iterator[Iterator[Examined]]:
    """Examine files in worker processes when there are enough to pay for them."""
    limits = (settings.max_image_pixels, settings.min_image_side)
    workers = min(settings.intake_processes, len(paths) // 64 + 1)
    if workers <= 1:
        yield (examine(path, *limits) for path in paths)
        return
    with ProcessPoolExecutor(workers) as pool:
        n = len(paths)
        yield pool.map(examine, paths, [limits[0]] * n, [limits[1]] * n, chunksize=16)


class Registrar:
    """Writes examined files into one batch with a few bulk statements per chunk.

    Idempotency comes from looking up, per chunk, the images already known by
    (sha256, frame) and the paths already recorded for them.
    """

    def __init__(
        self, session: Session, batch_id: int, key: bytes, manifest: dict[Path, ManifestRow]
    ):
        self.session = session
        self.batch_id = batch_id
        self.key = key
        self.manifest = manifest

    def register(self, examined: list[Examined], report: IngestReport) -> None:
        shas = {item.sha256 for item in examined}
        known = {
            (sha, frame): image_id
            for image_id, sha, frame in self.session.execute(
                select(Image.id, Image.sha256, Image.frame).where(Image.sha256.in_(shas))
            )
        }
        new: dict[tuple[str, int], dict[str, Any]] = {}
        seen: list[tuple[tuple[str, int], Examined]] = []
        for item in examined:
            report.files += 1
            for frame in [p.frame for p in item.probed.images] if item.probed else [0]:
                key = (item.sha256, frame)
                if key in new:
                    new[key].update(self._described(item, new[key]))
                    report.duplicates += 1
                elif key in known:
                    self._describe_known(known[key], item)
                    report.duplicates += 1
                else:
                    new[key] = self._row(item, frame)
                    report.count(new[key].get("reason_code"))
                seen.append((key, item))
        known.update(self._insert_images(list(new.values())))
        self._record_paths(seen, known)

    def reject_rows(self, bad_rows: list[BadRow], report: IngestReport) -> None:
        """Manifest rows that name no usable file: recorded, keyed by manifest and line."""
        for row in bad_rows:
            marker = hashlib.sha256(f"manifest:{row.manifest}:{row.line}:{row.file}".encode())
            item = Examined(
                row.manifest, marker.hexdigest(), 0, 0, code=row.code, reason=row.reason
            )
            if self.session.scalar(select(Image.id).where(Image.sha256 == item.sha256)) is None:
                values = self._row(item, 0)
                values["source_path"] = f"{row.manifest}:{row.line}:{row.file}"
                self._insert_images([values])
                report.count(row.code)

    def _row(self, item: Examined, frame: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "batch_id": self.batch_id,
            "sha256": item.sha256,
            "frame": frame,
            "source_path": str(item.path),
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
        row |= lifecycle.registered() | {
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
        return row | self._described(item, row)

    def _described(self, item: Examined, current: dict[str, Any]) -> dict[str, Any]:
        """What this path's manifest row says of the image; it wins over the DICOM header.

        A duplicate found under another name may bring the row the first name
        lacked, so this applies to every path of a registered image.
        """
        row = self.manifest.get(item.path.resolve())
        if row is None or current.get("status") is ImageStatus.REJECTED:
            return {}
        values = {
            "patient_pseudonym": pseudonymise(row.patient_id, self.key),
            "laterality": normalise_laterality(row.laterality),
            "clinical_text": row.clinical_text,
            "label": row.label,
            "data_source": row.source,
            "study_key": row.study_id,
        }
        return {name: value for name, value in values.items() if value is not None}

    def _describe_known(self, image_id: int, item: Examined) -> None:
        image = self.session.get_one(Image, image_id)
        values = self._described(item, {"status": image.status})
        study_key = values.pop("study_key", None)
        for name, value in values.items():
            setattr(image, name, value)
        if study_key:
            image.study_id = self._study_ids({study_key: image.patient_pseudonym})[study_key]

    def _insert_images(self, rows: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
        if not rows:
            return {}
        wanted = {
            row["study_key"]: row.get("patient_pseudonym") for row in rows if row.get("study_key")
        }
        study_ids = self._study_ids(wanted)
        for row in rows:
            row["study_id"] = study_ids.get(row.pop("study_key", None))
        inserted = self.session.execute(
            insert(Image).returning(
                Image.id, Image.sha256, Image.frame, sort_by_parameter_order=True
            ),
            rows,
        )
        return {(sha, frame): image_id for image_id, sha, frame in inserted}

    def _study_ids(self, wanted: dict[str, str | None]) -> dict[str, int]:
        """Ids of the studies with these keys, creating the missing ones."""
        query = select(Study.study_key, Study.id).where(Study.study_key.in_(wanted))
        ids = {key: study_id for key, study_id in self.session.execute(query)}
        missing = [
            {"study_key": key, "patient_pseudonym": pseudonym}
            for key, pseudonym in wanted.items()
            if key not in ids
        ]
        if missing:
            created = self.session.execute(
                insert(Study).returning(Study.study_key, Study.id, sort_by_parameter_order=True),
                missing,
            )
            ids.update((key, study_id) for key, study_id in created)
        return ids

    def _record_paths(
        self, seen: list[tuple[tuple[str, int], Examined]], images: dict[tuple[str, int], int]
    ) -> None:
        """Record where each image was seen; a path seen before only gets its new stat."""
        paths = {str(item.path) for _, item in seen}
        recorded = {
            (row.image_id, row.path): row
            for row in self.session.scalars(select(ImagePath).where(ImagePath.path.in_(paths)))
        }
        fresh: dict[tuple[int, str], dict[str, Any]] = {}
        for key, item in seen:
            image_id, path = images[key], str(item.path)
            row = recorded.get((image_id, path))
            if row is not None:
                row.size_bytes, row.mtime_ns = item.size, item.mtime_ns
            else:
                fresh[(image_id, path)] = {
                    "image_id": image_id,
                    "batch_id": self.batch_id,
                    "path": path,
                    "size_bytes": item.size,
                    "mtime_ns": item.mtime_ns,
                    "seen_at": utcnow(),
                }
        if fresh:
            self.session.execute(insert(ImagePath), list(fresh.values()))


def _unchanged_paths(session: Session, folder: Path) -> dict[str, tuple[int, int]]:
    """Paths under ``folder`` already registered, with the size and mtime they had."""
    prefix = str(folder) + os.sep
    rows = session.execute(
        select(ImagePath.path, ImagePath.size_bytes, ImagePath.mtime_ns).where(
            ImagePath.path.startswith(prefix, autoescape=True)
        )
    )
    return {path: (size, mtime) for path, size, mtime in rows}


def _is_unchanged(path: Path, known: dict[str, tuple[int, int]]) -> bool:
    seen = known.get(str(path))
    if seen is None:
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    return seen == (stat.st_size, stat.st_mtime_ns)


def get_or_create_batch(session: Session, name: str, source: str) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.name == name))
    if batch is None:
        batch = Batch(name=name, source=source)
        session.add(batch)
        session.flush()
    return batch


def ingest(
    folder: Path,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    batch_name: str | None = None,
) -> IngestReport:
    """Register every file under ``folder`` into the batch ``batch_name``."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    name = batch_name or default_batch_name(folder)
    manifest: dict[Path, ManifestRow] = {}
    bad_rows: list[BadRow] = []
    for manifest_path in sorted(folder.rglob(MANIFEST_NAME)):
        rows, bad = read_manifest(manifest_path, folder)
        manifest.update(rows)
        bad_rows.extend(bad)

    with sessions.begin() as session:
        batch = get_or_create_batch(session, name, str(folder))
        batch_id = batch.id
        known = _unchanged_paths(session, folder)
    report = IngestReport(batch=name, batch_id=batch_id)
    structlog.contextvars.bind_contextvars(batch_id=batch_id)
    try:
        paths = []
        for path in discover(folder):
            if _is_unchanged(path, known):
                report.unchanged += 1
            else:
                paths.append(path)
        key = settings.resolved_pseudonym_key()
        with examining(paths, settings) as examined:
            while chunk := list(itertools.islice(examined, WRITE_CHUNK)):
                with sessions.begin() as session:
                    Registrar(session, batch_id, key, manifest).register(chunk, report)
        with sessions.begin() as session:
            Registrar(session, batch_id, key, manifest).reject_rows(bad_rows, report)
            session.get_one(Batch, batch_id).files_seen += report.files
        log.info(
            "batch_ingested",
            batch=name,
            files=report.files,
            unchanged=report.unchanged,
            images=report.images,
            duplicates=report.duplicates,
            rejected=report.rejected,
        )
    finally:
        structlog.contextvars.unbind_contextvars("batch_id")
    return report
