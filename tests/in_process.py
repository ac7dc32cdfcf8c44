"""Run the ``mdf`` command inside the test's process, and leave the process as it was.

``mdf.cli.main`` points logging at the current stderr, which pytest captures and then
closes, routes warnings into logging and sets an excepthook: all of it is put back.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import pytest
import structlog

from mdf.cli import main


class Mdf(Protocol):
    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of ``mdf ARGS``."""
        ...


@contextmanager
def mdf_command(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level, excepthook = root.handlers[:], root.level, sys.excepthook

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    try:
        yield run
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook = excepthook
        logging.captureWarnings(False)
