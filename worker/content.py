"""Reading an image's file once and checking it is still the one intake registered.

Intake identifies an image by the sha256 of its file. The file may be replaced before
a worker gets to it (a site re-sending a corrected photograph under the same name, a
hostile delivery), and a prediction for other bytes under the registered identity
would be a result for the wrong patient. So the worker reads the bytes once, hashes
exactly those, and decodes them only when the hash matches.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from db.lifecycle import ReasonCode
from mdf.imaging import Rejection


def read_registered(path: Path, sha256: str, *, max_bytes: int) -> bytes:
    """The file's content, when it is a regular file of at most ``max_bytes`` whose sha256
    is ``sha256``; else raise `Rejection` (``content_changed``, ``file_too_large``).

    Opened without blocking, so a FIFO put in the file's place cannot hang the worker.
    OSError from opening or reading propagates.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise Rejection(ReasonCode.CONTENT_CHANGED, "the path no longer names a regular file")
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Rejection(
            ReasonCode.FILE_TOO_LARGE,
            f"the file is now larger than {max_bytes:,} bytes (MDF_MAX_FILE_BYTES)",
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise Rejection(
            ReasonCode.CONTENT_CHANGED,
            f"the file changed since intake: sha256 {digest[:12]}… read, {sha256[:12]}… registered",
        )
    return data
