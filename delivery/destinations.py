"""Where results go: a DICOMweb server (STOW-RS) or a DICOM node (C-STORE).

A destination is written ``dicomweb:URL`` or ``dicom:AET@HOST:PORT``
(``MDF_RESULTS_DESTINATIONS``, ``mdf deliver --to``; the settings check the form). Its
name, as the deliveries table records it, is that text without any user or password a URL
may carry (``db.deliveries.destination_name``, which the scheduler's sweep reads too).
``send`` stores a study's objects and answers for each: ``None`` when stored, else why not,
in one line that quotes no value. STOW-RS posts them in one request, which the client
retries with backoff (``mdf.dicomweb``); C-STORE sends them over one association, calling
as ``MDF_DICOM_AE_TITLE``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from db.deliveries import destination_name
from mdf.dicomweb import client_for
from mdf.logs import summarise_error
from mdf.settings import Settings

__all__ = ["CStore", "Destination", "StowRs", "destination"]

#: Seconds a DICOM peer may take to answer, at association and per message.
DICOM_TIMEOUT_S = 60
#: C-STORE statuses that mean stored: success and the standard's warnings (coercion,
#: elements discarded, data set does not match the SOP class).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}

Outcomes = dict[str, str | None]


class Destination(Protocol):
    name: str

    def send(self, objects: Sequence[Dataset]) -> Outcomes:
        """Store ``objects``; per SOP Instance UID, ``None`` or why it was not stored."""
        ...


def _uids(objects: Sequence[Dataset]) -> list[str]:
    return [str(item.SOPInstanceUID) for item in objects]


class StowRs:
    def __init__(self, name: str, url: str, settings: Settings):
        self.name = name
        self.client = client_for(url, settings, connections=1)

    def send(self, objects: Sequence[Dataset]) -> Outcomes:
        try:
            response = self.client.store_instances(list(objects))
        except Exception as error:  # refused, unreachable, an HTTP error: every object
            reason = summarise_error(error)
            return dict.fromkeys(_uids(objects), reason)
        failed = {
            str(item.ReferencedSOPInstanceUID): f"STOW-RS failure reason 0x{item.FailureReason:04X}"
            for item in response.get("FailedSOPSequence", [])
        }
        return {uid: failed.get(uid) for uid in _uids(objects)}


class CStore:
    def __init__(self, name: str, called: str, host: str, port: int, calling: str):
        self.name = name
        self.called, self.host, self.port = called, host, port
        self.ae = AE(ae_title=calling)
        for sop_class in (Comprehensive3DSRStorage, SegmentationStorage):
            self.ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = DICOM_TIMEOUT_S
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines dump headers

    def send(self, objects: Sequence[Dataset]) -> Outcomes:
        association = self.ae.associate(self.host, self.port, ae_title=self.called)
        if not association.is_established:
            return dict.fromkeys(
                _uids(objects), f"association {_refusal(association)} by {self.name}"
            )
        outcomes: Outcomes = {}
        try:
            for item in objects:
                outcomes[str(item.SOPInstanceUID)] = self._store(association, item)
        finally:
            if association.is_established:
                association.release()
        return outcomes

    @staticmethod
    def _store(association: Association, item: Dataset) -> str | None:
        try:
            status = association.send_c_store(item)
        except Exception as error:  # no accepted context, the connection lost
            return summarise_error(error)
        code = status.get("Status") if status else None
        if code is None:
            return "C-STORE got no answer (association lost)"
        return None if code in STORED else f"C-STORE status 0x{code:04X}"


def _refusal(association: Association) -> str:
    if association.is_rejected:
        return "rejected"
    return "aborted" if association.is_aborted else "not answered"


def destination(text: str, settings: Settings) -> Destination:
    """The destination ``text`` names (a form the settings have checked)."""
    name = destination_name(text)
    scheme, _, where = text.partition(":")
    if scheme == "dicomweb":
        return StowRs(name, where, settings)
    called, _, address = where.rpartition("@")
    host, _, port = address.rpartition(":")
    return CStore(name, called, host, int(port), settings.dicom_ae_title)
