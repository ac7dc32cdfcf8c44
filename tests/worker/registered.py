"""Images registered as intake registers them: under the sha256 of their file's content."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from image_rows import add_images
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image


def add_files(sessions: sessionmaker[Session], paths: list[Path], **values: Any) -> list[int]:
    """``add_images``, each existing file registered under the hash of its content."""
    ids = add_images(sessions, paths, **values)
    with sessions.begin() as session:
        for image_id, path in zip(ids, paths, strict=True):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                session.execute(sa.update(Image).where(Image.id == image_id).values(sha256=digest))
    return ids
