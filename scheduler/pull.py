"""``mdf pull``: new instances of a PACS, found over QIDO-RS, fetched over WADO-RS, taken in.

A pull asks the source for the series of a study-date window in each wanted modality,
lists their instances and retrieves only those it has not retrieved before: each lands
in the spool as ``pulled/SOURCE/STUDY/SOP.dcm`` (names hashed from the UIDs,
``scheduler.spool``), written whole, so a file that exists is an instance already held
and a second pull of the same window transfers nothing. The source's folder then goes to
the ordinary intake, which registers what it has not registered yet, including files an
interrupted pull left behind. A failed request is retried with exponential backoff
(urllib3); an instance still failing is counted with its reason and fetched next time.
Instances are asked for in their stored transfer syntax, so nothing is transcoded.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from dicomweb_client.api import DICOMwebClient

from mdf.dicomweb import client_for
from mdf.logs import summarise_error
from mdf.settings import Settings
from scheduler.spool import uid_key, write_atomically

log = structlog.get_logger(__name__)

#: Instances fetched at once: a PACS serves a few requests in parallel well.
PARALLEL_RETRIEVALS = 4
#: Any transfer syntax: the instance as stored, never transcoded by the server.
AS_STORED = (("application/dicom", "*"),)
#: Temporary folders of pulls older than this were left by a killed pull.
STALE_TEMPORARY_S = 24 * 3600
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str


@dataclass
class PullReport:
    source: str
    found: int = 0
    already_held: int = 0
    retrieved: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason: instances

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


def source_name(url: str) -> str:
    """A folder name for a source: its host, port and path (never a password in the URL)."""
    parts = urlsplit(url)
    where = f"{parts.hostname}_{parts.port or ''}{parts.path}"
    return re.sub(r"[^A-Za-z0-9.-]+", "_", where).strip("_")[:100]


def batch_name(url: str, today: date | None = None) -> str:
    return f"dicomweb-{source_name(url)[:150]}-{today or datetime.now(UTC).date():%Y-%m-%d}"


def _value(attributes: dict[str, dict], tag: str) -> str:
    return str(attributes[tag]["Value"][0])


def find_instances(
    client: DICOMwebClient, since: date, until: date, modalities: list[str]
) -> Iterator[InstanceRef]:
    """Every instance of the series of ``modalities`` in studies dated ``since`` to ``until``."""
    window = f"{since:%Y%m%d}-{until:%Y%m%d}"
    for modality in modalities:
        found = client.search_for_series(
            search_filters={"StudyDate": window, "Modality": modality},
            fields=[STUDY_UID, SERIES_UID],
            get_remaining=True,
        )
        for series in found:
            study, series_uid = _value(series, STUDY_UID), _value(series, SERIES_UID)
            for instance in client.search_for_instances(study, series_uid, get_remaining=True):
                yield InstanceRef(study, series_uid, _value(instance, SOP_UID))


class Puller:
    """Pulls one source into its folder of the spool."""

    def __init__(self, url: str, settings: Settings):
        self.url = url
        self.client = client_for(url, settings, PARALLEL_RETRIEVALS)
        spool = settings.resolved_dicom_spool_dir
        self.folder = spool / "pulled" / source_name(url)
        self.temporaries = spool / "pull-tmp"

    def path(self, ref: InstanceRef) -> Path:
        return self.folder / uid_key(ref.study) / f"{uid_key(ref.sop)}.dcm"

    def pull(self, since: date, until: date, modalities: list[str]) -> PullReport:
        """Fetch the window's instances not held yet; returns what was found and fetched."""
        report = PullReport(source=self.url)
        wanted = []
        for ref in find_instances(self.client, since, until, modalities):
            report.found += 1
            if self.path(ref).exists():
                report.already_held += 1
            else:
                wanted.append(ref)
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._temporary() as temporary, ThreadPoolExecutor(PARALLEL_RETRIEVALS) as pool:
            for failure in pool.map(self._retrieve, wanted, [temporary] * len(wanted)):
                if failure is None:
                    report.retrieved += 1
                else:
                    report.failed[failure] = report.failed.get(failure, 0) + 1
                    log.warning("instance_not_retrieved", reason=failure)
        log.info(
            "dicomweb_pulled",
            found=report.found,
            already_held=report.already_held,
            retrieved=report.retrieved,
            failed=report.failures,
        )
        return report

    def _retrieve(self, ref: InstanceRef, temporary: Path) -> str | None:
        """Fetch one instance into the spool; None, or why it could not be fetched."""
        try:
            ds = self.client.retrieve_instance(ref.study, ref.series, ref.sop, AS_STORED)
            encoded = BytesIO()
            ds.save_as(encoded, enforce_file_format=True)
        except Exception as error:  # the next pull tries again; the reason is counted
            return summarise_error(error)
        write_atomically(self.path(ref), encoded.getvalue(), temporary)
        return None

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[Path]:
        """This pull's own folder for partial writes, on the spool's file system."""
        self.temporaries.mkdir(parents=True, exist_ok=True)
        for left in self.temporaries.iterdir():
            if time.time() - left.stat().st_mtime > STALE_TEMPORARY_S:
                shutil.rmtree(left, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=self.temporaries))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def default_window(settings: Settings, today: date | None = None) -> tuple[date, date]:
    """The nightly window: the last ``MDF_DICOMWEB_DAYS`` days, today included."""
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=settings.dicomweb_days - 1), today
