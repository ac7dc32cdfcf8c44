"""Test-only: a decoder that kills its worker, as a crashing codec would (no exception, no
cleanup), on any file holding ``POISON``. Put on a worker's PYTHONPATH by the fault tests.

A worker runs in the repository it is started in: that comes first on ``sys.path``.
"""

import os
import signal
import sys
from typing import Any

sys.path.insert(0, os.getcwd())

import mdf.imaging

POISON = b"mdf-test: this file kills the decoder"
_decode_reduced = mdf.imaging.decode_reduced


def decode_reduced(data: bytes, *args: Any, **kwargs: Any) -> Any:
    if POISON in data:
        os.kill(os.getpid(), signal.SIGKILL)
    return _decode_reduced(data, *args, **kwargs)


mdf.imaging.decode_reduced = decode_reduced
