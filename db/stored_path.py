"""Paths as the database stores them: lossless for any file name a delivery can hold.

A POSIX file name is bytes; the database's text columns hold valid Unicode only.
A path that is valid UTF-8 is stored as it is (absolute, so it starts with ``/``).
Any other path is stored as its ``file://`` URI (RFC 8089), whose percent escapes
keep every byte and show the odd ones readably (``caf%E9.jpg``); no plain path
starts with ``file:``, so :func:`from_stored` tells the two apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

URI_PREFIX = "file://"


def is_utf8(path: str) -> bool:
    """Whether a path (as the OS module decodes names, surrogateescape) is valid UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_stored(path: str | Path) -> str:
    """The text the database keeps for an absolute path."""
    text = os.fspath(path)
    return text if is_utf8(text) else Path(text).as_uri()


def from_stored(text: str) -> Path:
    """The path a stored text names, byte for byte."""
    if text.startswith(URI_PREFIX):
        return Path(os.fsdecode(unquote_to_bytes(urlsplit(text).path)))
    return Path(text)


def shown(path: str | Path) -> str:
    """A path as text that any terminal or file can take: odd bytes as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
