"""Paths as the database stores and shows them: any file name, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

from db.stored_path import from_stored, shown, to_stored


def test_a_name_that_is_not_utf8_round_trips_and_is_shown_escaped() -> None:
    odd = Path(os.fsdecode(b"/inbox/caf\xe9.jpg"))
    stored = to_stored(odd)
    stored.encode("utf-8")  # a database text column takes it
    assert from_stored(stored) == odd
    assert shown(odd) == "/inbox/caf\\xe9.jpg"
    shown(odd).encode("utf-8")  # and so does a terminal


def test_a_utf8_name_is_stored_and_shown_as_it_is() -> None:
    name = Path("/inbox/Müller/été.jpg")
    assert to_stored(name) == str(name) and from_stored(str(name)) == name
    assert shown(name) == str(name)
