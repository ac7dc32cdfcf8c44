"""The walk of a delivery: every entry found, none opened that could hang or escape.

A delivered folder is hostile. A FIFO blocks whoever opens it, a device never ends,
a symbolic link may point at any file of the machine, a sparse file may claim
terabytes, a folder may refuse to be listed. So the walk looks at each entry with
``lstat`` and never opens one: a regular file becomes an :class:`Entry` to read,
anything else an :class:`Entry` refused with its code and reason. A symbolic link
is followed only when its resolved target lies inside the inbox and is a regular
file. :func:`read_capped` then reads a file at most once, never past the size cap,
through a descriptor that cannot be a FIFO swapped in since the walk.

Paths are ``str`` as the OS module decodes them (undecodable bytes as lone
surrogates): every name round-trips, whatever its encoding.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from db.lifecycle import ReasonCode
from mdf.imaging import Rejection
from scheduler.manifest import MANIFEST_NAME

#: Read this much at a time: a file's size is never trusted to size a buffer.
_READ_BLOCK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One entry of a delivery: a regular file to read (``real``), or refused (``code``).

    ``path`` is where the delivery put it; ``real`` is the file to read, the target
    when ``path`` is a link. Size, mtime and identity are the target's.
    """

    path: str
    real: str | None = None
    size: int = 0
    mtime_ns: int = 0
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino), compared after opening
    manifest: bool = False
    code: ReasonCode | None = None
    reason: str | None = None


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")


def _file(path: str, real: str, status: os.stat_result, max_bytes: int) -> Entry:
    found = Entry(
        path,
        real,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        identity=(status.st_dev, status.st_ino),
        manifest=os.path.basename(path) == MANIFEST_NAME,
    )
    if status.st_size > max_bytes:
        return _refused(found, ReasonCode.FILE_TOO_LARGE, _too_large(status.st_size, max_bytes))
    return found


def _refused(entry: Entry, code: ReasonCode, reason: str) -> Entry:
    return Entry(entry.path, None, entry.size, entry.mtime_ns, entry.identity, False, code, reason)


def _too_large(size: int, max_bytes: int) -> str:
    return f"the file is {size} bytes, over the {max_bytes}-byte limit: not read"


def _link(path: str, root: Path, max_bytes: int) -> Entry | str:
    """A link's entry, or the path of the folder it names (never walked through)."""
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(root):
        return Entry(
            path,
            code=ReasonCode.OUTSIDE_INBOX_LINK,
            reason="a symbolic link to a place outside the inbox is not followed",
        )
    try:
        status = os.stat(real)
    except OSError as error:
        return Entry(
            path, code=ReasonCode.UNREADABLE, reason=f"broken symbolic link: {error.strerror}"
        )
    if stat.S_ISREG(status.st_mode):
        return _file(path, real, status, max_bytes)
    if stat.S_ISDIR(status.st_mode):
        return Entry(
            path,
            code=ReasonCode.SPECIAL_FILE,
            reason="a symbolic link to a folder is not followed: its files count where they lie",
        )
    return Entry(
        path,
        code=ReasonCode.SPECIAL_FILE,
        reason=f"a symbolic link to {_kind(status.st_mode)} is never opened",
    )


def _classify(path: str, root: Path, max_bytes: int) -> Entry | None:
    """The entry at ``path``; None for a folder to walk into."""
    try:
        status = os.lstat(path)
    except OSError as error:
        return Entry(path, code=ReasonCode.UNREADABLE, reason=f"cannot be read: {error.strerror}")
    if stat.S_ISDIR(status.st_mode):
        return None
    if stat.S_ISLNK(status.st_mode):
        return _link(path, root, max_bytes)
    if stat.S_ISREG(status.st_mode):
        return _file(path, path, status, max_bytes)
    return Entry(
        path,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        code=ReasonCode.SPECIAL_FILE,
        reason=f"{_kind(status.st_mode)} is never opened",
    )


def walk(root: Path, max_bytes: int) -> Iterator[Entry]:
    """Every entry below ``root`` (a resolved folder), files before subfolders, by name."""
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                names = sorted(entry.name for entry in listing)
        except OSError as error:
            yield Entry(
                directory,
                code=ReasonCode.UNREADABLE,
                reason=f"folder cannot be listed: {error.strerror}",
            )
            continue
        folders = []
        for name in names:
            path = os.path.join(directory, name)
            found = _classify(path, root, max_bytes)
            if found is not None:
                yield found
                continue
            folders.append(path)
            if name == MANIFEST_NAME:
                yield Entry(
                    path,
                    code=ReasonCode.UNREADABLE_MANIFEST,
                    reason=f"a folder named {MANIFEST_NAME} is no manifest; its files are read",
                )
        pending.extend(reversed(folders))


def read_capped(entry: Entry, max_bytes: int) -> bytes:
    """The content of a file entry, or raise `Rejection` (special, replaced, too large).

    The file is opened without following a link and without blocking, and must be
    the very regular file the walk saw. OSError from the system propagates.
    """
    assert entry.real is not None
    descriptor = os.open(entry.real, _OPEN_FLAGS)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise Rejection(ReasonCode.SPECIAL_FILE, f"{_kind(status.st_mode)} is not read")
        if (status.st_dev, status.st_ino) != entry.identity:
            raise Rejection(ReasonCode.UNREADABLE, "the file was replaced while intake read it")
        if status.st_size > max_bytes:
            raise Rejection(ReasonCode.FILE_TOO_LARGE, _too_large(status.st_size, max_bytes))
        blocks, total = [], 0
        while total <= max_bytes and (
            block := os.read(descriptor, min(_READ_BLOCK, max_bytes + 1 - total))
        ):
            blocks.append(block)
            total += len(block)
    finally:
        os.close(descriptor)
    if total > max_bytes:
        raise Rejection(ReasonCode.FILE_TOO_LARGE, _too_large(total, max_bytes))
    return b"".join(blocks)
