"""UIDs of result objects, derived rather than drawn: the same study and model, the same UIDs.

A PACS files an instance by its SOP Instance UID: an object sent again under the same UID
replaces (or is ignored as) the one it holds, where a fresh UID would be a second copy. So
every UID of a result is a hash (pydicom's ``generate_uid`` with entropy sources) of the
source study's UID, the model version's manifest hash and the object's kind (and, for a
SEG, its source instance): a resend, a retry or a second sender all produce the same UIDs,
and a new model version produces new objects beside the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid

__all__ = ["ResultUids"]

_SALT = "mdf-result"


@dataclass(frozen=True)
class ResultUids:
    study_uid: str
    model_sha256: str

    def _uid(self, *parts: str) -> str:
        return generate_uid(entropy_srcs=[_SALT, self.study_uid, self.model_sha256, *parts])

    @property
    def sr(self) -> str:
        return self._uid("sr")

    @property
    def sr_series(self) -> str:
        return self._uid("sr-series")

    @property
    def seg_series(self) -> str:
        return self._uid("seg-series")

    def seg(self, source_sop_uid: str) -> str:
        return self._uid("seg", source_sop_uid)

    def tracking(self, source_sop_uid: str, frame: int) -> str:
        return self._uid("tracking", source_sop_uid, str(frame))

    @property
    def device(self) -> str:
        """The model version as an SR observer device: the same in every study."""
        return generate_uid(entropy_srcs=[_SALT, "device", self.model_sha256])
