"""Intake: a delivered folder becomes registered images and recorded rejections.

Every entry of the folder ends as an ``images`` row: ``registered`` (one row per
frame) or ``rejected`` with a specific reason, whatever the entry is (see
``scheduler.walk``: special files, links, unreadable folders, oversized files) and
whatever its name's encoding (``db.stored_path``). A manifest that cannot be
read is one rejection while its folder's files are still registered; a bad manifest
row is rejected alone (``scheduler.manifest``). No text reaches the database before
its column width is checked (``db.columns``): one bad value never fails a
chunk, so it never stops a night nor every rerun of it.

Registration is idempotent and safe to run twice at once (``scheduler.registrar``).
A path already seen with the same size and modification time is not read again.
Input files are only ever read.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.columns import first_problem, width
from db.lifecycle import ReasonCode
from db.models import Batch, Image, ImagePath
from db.stored_path import shown, to_stored
from db.upsert import insert_new
from mdf.errors import CommandError
from mdf.imaging import ProbedFile, Rejection, probe
from mdf.settings import Settings
from scheduler.manifest import Manifests
from scheduler.registrar import Examined, IngestReport, Registrar, marker
from scheduler.walk import Entry, read_capped, walk

__all__ = ["IngestReport", "default_batch_name", "examine", "ingest"]

log = structlog.get_logger(__name__)

#: Files registered per transaction: large enough to amortise the round trips.
WRITE_CHUNK = 500


@dataclass(frozen=True)
class Limits:
    """What a file may be: picklable, for the examining processes."""

    max_pixels: int
    min_side: int
    max_bytes: int
    max_frames: int


def default_batch_name(folder: Path) -> str:
    """The folder's name and the day, cut to fit the batches.name column."""
    day = f"-{datetime.now(UTC):%Y-%m-%d}"
    name = shown(folder.resolve().name)
    return name[: (width(Batch, "name") or len(name)) - len(day)] + day


def _refused(entry: Entry, code: ReasonCode, reason: str, *, retry: bool = False) -> Examined:
    """A rejection of an entry with no content read; ``retry``: read it again next time."""
    sha = marker(code, to_stored(entry.path))
    stat = (0, 0) if retry else (entry.size, entry.mtime_ns)
    return Examined(entry.path, entry.real, sha, *stat, code=code, reason=reason)


def examine(entry: Entry, limits: Limits) -> Examined:
    """Read and probe one entry, or say why it is refused."""
    if entry.code is not None:
        assert entry.reason is not None
        return _refused(entry, entry.code, entry.reason, retry=entry.code is ReasonCode.UNREADABLE)
    try:
        data = read_capped(entry, limits.max_bytes)
    except Rejection as rejection:
        return _refused(entry, rejection.code, rejection.reason)
    except OSError as error:
        return _refused(entry, ReasonCode.UNREADABLE, f"cannot read: {error.strerror}", retry=True)
    assert entry.real is not None
    found = Examined(
        entry.path, entry.real, hashlib.sha256(data).hexdigest(), entry.size, entry.mtime_ns
    )
    try:
        probed = probe(
            Path(entry.real),
            max_pixels=limits.max_pixels,
            min_side=limits.min_side,
            max_frames=limits.max_frames,
            data=data,
        )
        problem = first_problem(Image, _header_fields(probed), nul=ReasonCode.DECODE_ERROR)
        if problem is not None:
            raise Rejection(*problem)
    except Rejection as rejection:
        return replace(found, code=rejection.code, reason=rejection.reason)
    return replace(found, probed=probed)


def _header_fields(probed: ProbedFile) -> dict[str, str | None]:
    """The probed values intake writes to text columns of images, by column."""
    names = ("sop_class_uid", "modality", "study_uid", "series_uid", "sop_uid", "laterality")
    return {"file_kind": probed.kind, "clinical_text": probed.clinical_text} | {
        name: getattr(probed, name) for name in names
    }


@contextmanager
def examining(entries: list[Entry], settings: Settings) -> Iterator[Iterator[Examined]]:
    """Examine entries in worker processes when there are enough to pay for them."""
    limits = Limits(
        settings.max_image_pixels,
        settings.min_image_side,
        settings.max_file_bytes,
        settings.max_frames,
    )
    workers = min(settings.intake_processes, len(entries) // 64 + 1)
    if workers <= 1:
        yield (examine(entry, limits) for entry in entries)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield pool.map(examine, entries, itertools.repeat(limits), chunksize=16)


def _read_manifests(
    entries: list[Entry], root: Path, max_bytes: int
) -> tuple[Manifests, list[Examined]]:
    """Every manifest's rows, and a rejection for each manifest unusable as a whole."""
    manifests = Manifests(root)
    refused = []
    for entry in entries:
        try:
            manifests.add(entry.path, read_capped(entry, max_bytes))
        except Rejection as rejection:
            refused.append(_refused(entry, rejection.code, rejection.reason))
        except OSError as error:
            reason = f"manifest cannot be read: {error.strerror}"
            refused.append(_refused(entry, ReasonCode.UNREADABLE_MANIFEST, reason, retry=True))
    return manifests, refused


def _unchanged_paths(session: Session, folder: Path) -> dict[str, tuple[int, int]]:
    """Paths under ``folder`` already registered (as stored), with their size and mtime."""
    under = [
        ImagePath.path.startswith(prefix + "/", autoescape=True)
        for prefix in {to_stored(folder), folder.as_uri()}
    ]
    rows = session.execute(
        select(ImagePath.path, ImagePath.size_bytes, ImagePath.mtime_ns).where(or_(*under))
    )
    return {path: (size, mtime) for path, size, mtime in rows}


def get_or_create_batch(session: Session, name: str, source: str) -> int:
    """The id of batch ``name``, created unless another intake did first."""
    session.execute(
        insert_new(session, Batch, ["name"]), [{"name": name, "source": source, "files_seen": 0}]
    )
    return session.scalars(select(Batch.id).where(Batch.name == name)).one()


def ingest(
    folder: Path,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    batch_name: str | None = None,
) -> IngestReport:
    """Register every entry under ``folder`` into the batch ``batch_name``."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    name = batch_name or default_batch_name(folder)
    if (problem := first_problem(Batch, {"name": name}, nul=ReasonCode.BAD_MANIFEST)) is not None:
        raise CommandError(f"batch {problem[1]}")
    key = settings.resolved_pseudonym_key()  # refused before anything is written
    entries = list(walk(folder, settings.max_file_bytes))
    manifests, refused = _read_manifests(
        [e for e in entries if e.manifest], folder, settings.max_file_bytes
    )
    with sessions.begin() as session:
        batch_id = get_or_create_batch(session, name, to_stored(folder))
        known = _unchanged_paths(session, folder)
    report = IngestReport(batch=name, batch_id=batch_id)
    structlog.contextvars.bind_contextvars(batch_id=batch_id)
    try:
        todo = []
        for entry in entries:
            if entry.manifest:
                continue
            if known.get(to_stored(entry.path)) == (entry.size, entry.mtime_ns):
                report.unchanged += 1
            else:
                todo.append(entry)
        with examining(todo, settings) as examined:
            chunks = itertools.chain(refused, examined)
            while chunk := list(itertools.islice(chunks, WRITE_CHUNK)):
                with sessions.begin() as session:
                    Registrar(session, batch_id, key, manifests.rows, report).register(chunk)
        with sessions.begin() as session:
            Registrar(session, batch_id, key, manifests.rows, report).reject_rows(manifests.bad)
            session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(files_seen=Batch.files_seen + report.files)
            )
        log.info(
            "batch_ingested",
            files=report.files,
            unchanged=report.unchanged,
            images=report.images,
            duplicates=report.duplicates,
            rejected=report.rejected,
        )
    finally:
        structlog.contextvars.unbind_contextvars("batch_id")
    return report
