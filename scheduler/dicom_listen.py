"""``mdf dicom listen``: a DICOM Storage SCP whose studies go to the ordinary intake.

Cameras and PACS push instances with C-STORE. Each instance is written whole into the
spool (``scheduler.spool``) before its success status goes back, so an acknowledged
instance is on disk even if this process is killed the next moment. DICOM has no
end-of-study signal: a study is handed to intake once none of its instances has arrived
for ``MDF_DICOM_STUDY_QUIET_S`` seconds. The hand-over renames the study's folder out of
the arrival area in one step, so intake never sees a study still growing; an instance
arriving later starts a new folder of the same study, registered on its own (intake is
idempotent). A folder is marked handed only after intake returns: a restart hands over
again whatever is unmarked, and what the arrival area holds once it has been quiet.

Only the calling AE titles of ``MDF_DICOM_ALLOWED_AES`` may associate; only the SOP
classes and transfer syntaxes intake accepts and decodes are negotiated, so a camera
sending anything else is told at association. Patient identity never reaches a log line:
the listener logs AE titles and hashed study keys, and pynetdicom logs warnings only.
It counts associations, instances and hand-overs for Prometheus (``mdf.metrics``), and
:func:`echo` is its health check: a C-ECHO as a camera would send it.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import structlog
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from mdf.imaging.dicom import ACCEPTED_SOP_CLASSES
from mdf.logs import summarise_error
from mdf.metrics import DICOM_ASSOCIATIONS, DICOM_INSTANCES, DICOM_STUDIES
from mdf.settings import Settings
from scheduler.spool import clear_partial, sync_directory, uid_key, write_atomically

log = structlog.get_logger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 C-STORE: "Refused: Out of Resources"
#: A failed hand-over is retried after this many seconds, doubling up to the cap.
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 300.0
#: The marker of a folder intake has registered, kept beside the folders.
HANDED_SUFFIX = ".handed"


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes intake can decode here (the same test as ``mdf.imaging.dicom``)."""
    decodable = []
    for syntax in AllTransferSyntaxes:
        with contextlib.suppress(NotImplementedError):
            if get_decoder(syntax).is_available:
                decodable.append(syntax)
    return decodable


def batch_name(now: datetime | None = None) -> str:
    """Received studies join one batch a day, as a night's folder would."""
    return f"dicom-listen-{(now or datetime.now(UTC)):%Y-%m-%d}"


def _study_uid(data: bytes) -> str | None:
    """The Study Instance UID of an encoded instance, or None when it has none readable."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.StudyInstanceUID) or None
    except Exception:  # intake records why the file is unreadable; here it is only filed
        return None


class StudySpool:
    """Received instances by study: ``incoming/`` while arriving, ``studies/`` once handed.

    Stores (one thread per association) and hand-overs (the main thread) take one lock,
    so a study folder is never renamed while an instance is being moved into it.
    """

    def __init__(self, root: Path):
        self.temporary = root / "tmp"
        self.incoming = root / "incoming"
        self.studies = root / "studies"
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}
        self._retry_at: dict[Path, tuple[float, float]] = {}  # folder: (when, delay)

    def recover(self) -> None:
        """After a restart: drop partial writes; studies found arriving count as just arrived."""
        for folder in (self.temporary, self.incoming, self.studies):
            folder.mkdir(parents=True, exist_ok=True)
        removed = clear_partial(self.temporary)
        now = time.monotonic()
        with self._lock:
            for study in self.incoming.iterdir():
                self._last_arrival.setdefault(study.name, now)
        log.info("dicom_spool_recovered", partial_removed=removed, arriving=len(self._last_arrival))

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> str:
        """Write one instance whole into its study's arrival folder; returns the study key."""
        study = uid_key(study_uid)
        with self._lock:
            write_atomically(
                self.incoming / study / f"{uid_key(sop_uid)}.dcm", data, self.temporary
            )
            self._last_arrival[study] = time.monotonic()
        return study

    def close_quiet(self, quiet_s: float) -> None:
        """Move each study quiet for ``quiet_s`` seconds to ``studies/``, ready for intake."""
        now = time.monotonic()
        with self._lock:
            for study, last in list(self._last_arrival.items()):
                if now - last < quiet_s:
                    continue
                target = self.studies / f"{study}-{time.time_ns()}"
                (self.incoming / study).rename(target)
                sync_directory(self.studies)
                sync_directory(self.incoming)
                del self._last_arrival[study]

    def ready(self) -> list[Path]:
        """Folders moved out of arrival and not yet registered, oldest first, due for a try."""
        now = time.monotonic()
        return sorted(
            folder
            for folder in self.studies.iterdir()
            if folder.is_dir()
            and not folder.with_name(folder.name + HANDED_SUFFIX).exists()
            and self._retry_at.get(folder, (0.0, 0.0))[0] <= now
        )

    def mark_handed(self, folder: Path) -> None:
        folder.with_name(folder.name + HANDED_SUFFIX).touch()
        sync_directory(folder.parent)
        self._retry_at.pop(folder, None)

    def postpone(self, folder: Path) -> float:
        """Back off before the next try of ``folder``; returns the delay."""
        delay = min(self._retry_at.get(folder, (0.0, RETRY_FIRST_S / 2))[1] * 2, RETRY_MAX_S)
        self._retry_at[folder] = (time.monotonic() + delay, delay)
        return delay


def hand_over(spool: StudySpool, quiet_s: float, ingest: Callable[[Path], object]) -> int:
    """Give intake every study quiet long enough; returns how many folders were registered."""
    spool.close_quiet(quiet_s)
    handed = 0
    for folder in spool.ready():
        try:
            ingest(folder)
        except Exception as error:
            delay = spool.postpone(folder)
            DICOM_STUDIES.labels("failed").inc()
            log.error("study_handover_failed", error=summarise_error(error), retry_in_s=delay)
            continue
        spool.mark_handed(folder)
        DICOM_STUDIES.labels("handed").inc()
        handed += 1
        log.info("study_handed_over", study=folder.name.partition("-")[0])
    return handed


def _on_store(event: Event, spool: StudySpool) -> int:
    """C-STORE: success only once the instance is on disk."""
    sop_uid = str(event.request.AffectedSOPInstanceUID)
    data = event.encoded_dataset()
    try:
        study = spool.store(_study_uid(data) or sop_uid, sop_uid, data)
    except OSError as error:
        DICOM_INSTANCES.labels("refused").inc()
        log.error("instance_not_stored", error=summarise_error(error))
        return OUT_OF_RESOURCES
    DICOM_INSTANCES.labels("stored").inc()
    log.debug("instance_stored", study=study, calling_ae=event.assoc.requestor.ae_title)
    return SUCCESS


def _on_accepted(event: Event) -> None:
    DICOM_ASSOCIATIONS.labels("accepted").inc()
    log.info("association_accepted", calling_ae=event.assoc.requestor.ae_title)


def _on_rejected(event: Event) -> None:
    DICOM_ASSOCIATIONS.labels("refused").inc()
    log.warning("association_refused", calling_ae=event.assoc.requestor.ae_title)


def application_entity(settings: Settings, ae_title: str) -> AE:
    """The SCP: intake's SOP classes in the syntaxes it decodes, and C-ECHO."""
    ae = AE(ae_title=ae_title)
    ae.require_calling_aet = list(settings.dicom_allowed_aes)
    ae.require_called_aet = True
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in sorted(ACCEPTED_SOP_CLASSES):
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification)
    return ae


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS when a certificate is configured; peers then need a certificate the CA signed."""
    if settings.dicom_tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.dicom_tls_cert_file, settings.dicom_tls_key_file)
    if settings.dicom_tls_ca_file is not None:
        context.load_verify_locations(settings.dicom_tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def listen(
    settings: Settings,
    ingest: Callable[[Path], object],
    *,
    host: str,
    port: int,
    ae_title: str,
    stop: threading.Event,
) -> None:
    """Serve until ``stop`` is set, handing quiet studies to ``ingest`` meanwhile."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines dump headers
    for counter, outcomes in (
        (DICOM_ASSOCIATIONS, ("accepted", "refused")),
        (DICOM_INSTANCES, ("stored", "refused")),
        (DICOM_STUDIES, ("handed", "failed")),
    ):
        for outcome in outcomes:
            counter.labels(outcome)  # served as 0 from the start, not only once it happens
    spool = StudySpool(settings.resolved_dicom_spool_dir)
    spool.recover()
    handlers = [
        (evt.EVT_C_STORE, _on_store, [spool]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_REJECTED, _on_rejected),
    ]
    server = application_entity(settings, ae_title).start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=_tls_context(settings)
    )
    log.info("dicom_listening", ae_title=ae_title, host=host, port=server.server_address[1])
    tick = min(1.0, settings.dicom_study_quiet_s / 4)
    try:
        while not stop.wait(tick):
            hand_over(spool, settings.dicom_study_quiet_s, ingest)
    finally:
        server.shutdown()


def echo(host: str, port: int, *, called: str, calling: str, timeout_s: float) -> str | None:
    """A C-ECHO to ``called`` at ``host:port``: None when it succeeded, else why not."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a health check says one line
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    association = ae.associate(host, port, ae_title=called)
    if not association.is_established:
        if association.is_rejected:
            return f"association rejected (calling AE {calling}, called AE {called})"
        return "no association (nothing listening there, or it aborted)"
    try:
        status = association.send_c_echo()
    finally:
        association.release()
    code = status.get("Status") if status else None
    if code is None:
        return "C-ECHO got no answer"
    return None if code == SUCCESS else f"C-ECHO status 0x{code:04X}"
