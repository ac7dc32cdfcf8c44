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

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Image, ImagePath, ImageStatus, Study, utcnow
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
    code: str | None = None
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
            path, marker, 0, 0, code="unreadable", reason=f"cannot read: {error.strerror}"
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
    """Writes examined files into one batch; keeps the lookups that make it idempotent."""

    def __init__(
        self, session: Session, batch: Batch, key: bytes, manifest: dict[Path, ManifestRow]
    ):
        self.session = session
        self.batch = batch
        self.key = key
        self.manifest = manifest
        self.studies: dict[str, Study] = {}
        self.paths: dict[tuple[int, str], ImagePath] = {}

    def register(self, examined: list[Examined], report: IngestReport) -> None:
        shas = {item.sha256 for item in examined}
        existing = {
            (image.sha256, image.frame): image
            for image in self.session.scalars(select(Image).where(Image.sha256.in_(shas)))
        }
        paths = {str(item.path) for item in examined}
        self.paths = {
            (row.image_id, row.path): row
            for row in self.session.scalars(select(ImagePath).where(ImagePath.path.in_(paths)))
        }
        for item in examined:
            report.files += 1
            frames = [p.frame for p in item.probed.images] if item.probed else [0]
            for frame in frames:
                image = existing.get((item.sha256, frame))
                if image is None:
                    image = self._new_image(item, frame)
                    existing[(item.sha256, frame)] = image
                    if image.status is ImageStatus.REJECTED:
                        report.rejected += 1
                        code = image.reason_code or "rejected"
                        report.rejected_by_code[code] = report.rejected_by_code.get(code, 0) + 1
                    else:
                        report.images += 1
                else:
                    report.duplicates += 1
                    self._describe(image, item)
                self._add_path(image, item)
        self.session.flush()

    def reject_rows(self, bad_rows: list[BadRow], report: IngestReport) -> None:
        """Manifest rows that name no usable file: recorded, keyed by manifest and line."""
        for row in bad_rows:
            marker = hashlib.sha256(f"manifest:{row.manifest}:{row.line}:{row.file}".encode())
            examined = Examined(
                row.manifest, marker.hexdigest(), 0, 0, code=row.code, reason=row.reason
            )
            known = self.session.scalar(
                select(Image).where(Image.sha256 == examined.sha256, Image.frame == 0)
            )
            if known is None:
                image = self._new_image(examined, 0)
                image.source_path = f"{row.manifest}:{row.line}:{row.file}"
                report.rejected += 1
                report.rejected_by_code[row.code] = report.rejected_by_code.get(row.code, 0) + 1

    def _new_image(self, item: Examined, frame: int) -> Image:
        now = utcnow()
        image = Image(
            batch=self.batch,
            sha256=item.sha256,
            frame=frame,
            source_path=str(item.path),
            size_bytes=item.size,
            registered_at=now,
            status_changed_at=now,
        )
        self.session.add(image)
        probed = item.probed
        if probed is None:
            image.status = ImageStatus.REJECTED
            image.reason_code = item.code
            image.reason = item.reason
            image.finished_at = now
            log.info("file_rejected", path=str(item.path), code=item.code, reason=item.reason)
            return image
        size = next(p for p in probed.images if p.frame == frame)
        image.status = ImageStatus.REGISTERED
        image.file_kind = probed.kind
        image.width, image.height = size.width, size.height
        image.sop_class_uid = probed.sop_class_uid
        image.modality = probed.modality
        image.study_uid, image.series_uid = probed.study_uid, probed.series_uid
        image.sop_uid = probed.sop_uid
        image.laterality = probed.laterality
        image.clinical_text = probed.clinical_text
        image.patient_pseudonym = pseudonymise(probed.patient_id, self.key)
        self._describe(image, item)
        return image

    def _describe(self, image: Image, item: Examined) -> None:
        """Apply the manifest row of this path: it wins over the DICOM header.

        A duplicate found under another name may bring the manifest row the first
        name lacked, so this runs for every path of a registered image.
        """
        row = self.manifest.get(item.path.resolve())
        if row is None or image.status is ImageStatus.REJECTED:
            if image.study is None and image.study_uid:
                image.study = self._study(image.study_uid, image.patient_pseudonym)
            return
        if row.patient_id:
            image.patient_pseudonym = pseudonymise(row.patient_id, self.key)
        image.laterality = normalise_laterality(row.laterality) or image.laterality
        image.clinical_text = row.clinical_text or image.clinical_text
        image.label = row.label or image.label
        image.data_source = row.source or image.data_source
        study_key = row.study_id or image.study_uid
        if study_key:
            image.study = self._study(study_key, image.patient_pseudonym)

    def _add_path(self, image: Image, item: Examined) -> None:
        """Record where the image was seen; a path seen before only gets its new stat."""
        path = str(item.path)
        row = self.paths.get((image.id, path)) if image.id is not None else None
        if row is None:
            row = next((p for p in image.paths if p.path == path), None)
        if row is None:
            image.paths.append(
                ImagePath(batch=self.batch, path=path, size_bytes=item.size, mtime_ns=item.mtime_ns)
            )
        else:
            row.size_bytes, row.mtime_ns = item.size, item.mtime_ns

    def _study(self, key: str | None, pseudonym: str | None) -> Study | None:
        if not key:
            return None
        study = self.studies.get(key)
        if study is None:
            study = self.session.scalar(select(Study).where(Study.study_key == key))
            if study is None:
                study = Study(study_key=key, patient_pseudonym=pseudonym)
                self.session.add(study)
            self.studies[key] = study
        return study


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
                    batch = session.get_one(Batch, batch_id)
                    Registrar(session, batch, key, manifest).register(chunk, report)
        with sessions.begin() as session:
            batch = session.get_one(Batch, batch_id)
            Registrar(session, batch, key, manifest).reject_rows(bad_rows, report)
            batch.files_seen += report.files
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
