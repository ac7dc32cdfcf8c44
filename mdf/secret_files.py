"""Secrets: files that hold them, and what makes a pseudonym key unusable.

A pseudonym is only as safe as its key: with a guessable key anyone holding the
database recovers patient IDs from their pseudonyms by trying every ID. So a key
that is short or a known placeholder is refused, never used. Secret files follow
the Docker-secrets convention (``MDF_*_FILE`` names a file holding the value); the
embedded default key is such a file too, created once and then only ever read: a
new key would give every patient a new pseudonym.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from mdf.errors import CommandError

#: HMAC-SHA256 takes 256 bits; fewer key bytes make a dictionary attack cheaper.
MIN_KEY_BYTES = 32
#: Values people paste from examples; refused whatever their length.
PLACEHOLDERS = frozenset({"changeme", "secret", "password", "test", "example"})
#: A key containing one of these (letters only, lower case) was copied from an example.
PLACEHOLDER_WORDS = ("changeme", "replaceme", "example", "placeholder")
#: Fewer different characters than this is a pattern ("aaaa…", "abab…"), not a key.
MIN_DISTINCT_CHARACTERS = 6

GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_hex(32))"'


class UnusableSecret(CommandError, ValueError):
    """A secret that is missing, empty or guessable; a ValueError so settings validation
    reports it as a settings error, a CommandError so a command stops with one line."""


def read_secret(path: Path) -> str:
    """The secret held in ``path``, without the trailing newline an editor adds."""
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise UnusableSecret(f"secret file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnusableSecret(
            f"secret file {path} cannot be read ({error.__class__.__name__})"
        ) from None
    if not value:
        raise UnusableSecret(f"secret file {path} is empty")
    return value


def key_problem(key: str) -> str | None:
    """Why ``key`` must not be used as a pseudonym key, or None when it may."""
    letters = re.sub(r"[^a-z]", "", key.lower())
    if not key.strip():
        return "is empty"
    if letters in PLACEHOLDERS or any(word in letters for word in PLACEHOLDER_WORDS):
        return "is a placeholder"
    if len(key.encode()) < MIN_KEY_BYTES:
        return f"is shorter than {MIN_KEY_BYTES} bytes"
    if len(set(key)) < MIN_DISTINCT_CHARACTERS:
        return "is a repeated pattern"
    return None


def embedded_key(path: Path) -> str:
    """The key kept in ``path``, created there (mode 0600) by the first process to need it.

    The new key is written and synced under a temporary name, then linked to ``path``,
    which fails if ``path`` exists: two processes starting at once end with the winner's
    key, and nobody ever reads a half-written file. An existing empty file is an error
    (a lost key), never replaced.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym-key-")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
        _sync_directory(path.parent)
    return read_secret(path)


def _sync_directory(directory: Path) -> None:
    """Make the new directory entry survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
