"""A worker classifies the bytes intake registered, or nothing: a file replaced, grown or
swapped for something else after intake fails with its reason and gets no prediction."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from fake_classifier import FakeLoader, write_jpeg
from image_rows import predictions_per_image, statuses
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import ImageStatus, ReasonCode
from db.models import Image
from mdf.imaging import Rejection
from worker.content import read_registered


def _run(sessions: sessionmaker[Session], tmp_path: Path, ids: list[int]) -> None:
    make_pipeline(sessions, tmp_path, FakeLoader(), worker="w@host", max_file_bytes=100_000).run(
        ids
    )


def _reasons(sessions: sessionmaker[Session]) -> dict[int, tuple[str | None, str | None]]:
    with sessions() as session:
        return {
            i: (c, r)
            for i, c, r in session.execute(sa.select(Image.id, Image.reason_code, Image.reason))
        }


def test_a_file_replaced_after_intake_fails_as_content_changed_without_a_prediction(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    kept, replaced = add_files(
        sessions, [write_jpeg(inbox / "a.jpg", 200), write_jpeg(inbox / "b.jpg", 40)]
    )
    write_jpeg(inbox / "b.jpg", 90)  # another photograph under the registered name
    _run(sessions, tmp_path, [kept, replaced])
    assert statuses(sessions) == {kept: ImageStatus.DONE, replaced: ImageStatus.FAILED}
    code, reason = _reasons(sessions)[replaced]
    assert code == ReasonCode.CONTENT_CHANGED
    assert "changed since intake" in (reason or "")
    assert predictions_per_image(sessions) == {kept: 1}


def test_a_file_grown_past_the_limit_or_swapped_for_a_fifo_fails_unread(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    grown, piped = add_files(
        sessions, [write_jpeg(inbox / "g.jpg", 200), write_jpeg(inbox / "p.jpg", 40)]
    )
    with (inbox / "g.jpg").open("ab") as stream:
        stream.write(b"\0" * 200_000)
    (inbox / "p.jpg").unlink()
    os.mkfifo(inbox / "p.jpg")  # opening it for reading would block a careless worker forever
    _run(sessions, tmp_path, [grown, piped])
    reasons = _reasons(sessions)
    assert reasons[grown][0] == ReasonCode.FILE_TOO_LARGE
    assert reasons[piped] == (ReasonCode.CONTENT_CHANGED, "the path no longer names a regular file")
    assert predictions_per_image(sessions) == {}


def test_the_bytes_returned_are_the_bytes_hashed(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "x.jpg", 120)
    data = path.read_bytes()
    assert read_registered(path, hashlib.sha256(data).hexdigest(), max_bytes=len(data)) == data
    with pytest.raises(Rejection) as refused:
        read_registered(path, "0" * 64, max_bytes=len(data))
    assert refused.value.code is ReasonCode.CONTENT_CHANGED
