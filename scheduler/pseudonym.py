"""Keyed pseudonyms: the database links a patient's images without knowing who they are.

HMAC-SHA256 with ``MDF_PSEUDONYM_KEY``: the same patient gets the same pseudonym
in every batch, and nobody without the key can recompute it from a guessed ID. That
holds only for a key nobody can guess either, so ``Settings.resolved_pseudonym_key``
refuses short and placeholder keys before a command touches the database.
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonymise(patient_id: str | None, key: bytes) -> str | None:
    if patient_id is None or not patient_id.strip():
        return None
    return hmac.new(key, patient_id.strip().encode(), hashlib.sha256).hexdigest()
