"""Files received over the network, on disk before anyone is told they arrived.

A DICOM peer forgets an instance once we acknowledge it, so an acknowledged instance must
survive a crash or power cut: it is written under a temporary name, synced, renamed into
place and its folder synced (:func:`write_atomically`). A reader therefore sees a file
whole or not at all, and what a crash leaves half-written stays in the temporary folder,
which :func:`clear_partial` empties at the next start.

Files and folders are named by a hash of their DICOM UID (:func:`uid_key`): a UID comes
from the peer and could hold anything, and no UID belongs in a path that may be shown.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

#: Hex digits of a UID's hash in a name: 128 bits, no collision in any archive.
KEY_LENGTH = 32


def uid_key(uid: str) -> str:
    """A fixed-length file name for a DICOM UID."""
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:KEY_LENGTH]


def sync_directory(directory: Path) -> None:
    """Make directory entries (a rename, a new file) survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes, temporary_dir: Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` never holds part of it.

    ``temporary_dir`` must be on the file system of ``path``; a rename replaces an
    existing ``path`` (the same instance sent again) in one step.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=temporary_dir, suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def clear_partial(temporary_dir: Path) -> int:
    """Remove what an interrupted write left in ``temporary_dir``; returns how many files."""
    temporary_dir.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in temporary_dir.iterdir():
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed
