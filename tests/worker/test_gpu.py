"""Scaled workers claim GPUs one each, and a dead worker's GPU is free again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.gpu import NoFreeDevice, claim_device


def test_named_devices_are_used_as_given(tmp_path: Path) -> None:
    assert claim_device("cuda:3", tmp_path, 8) == ("cuda:3", None)
    assert claim_device("auto", tmp_path, 0) == ("cpu", None)


def test_each_worker_claims_a_different_gpu_until_none_is_left(tmp_path: Path) -> None:
    first, held_first = claim_device("auto", tmp_path, 2)
    second, held_second = claim_device("auto", tmp_path, 2)
    assert (first, second) == ("cuda:0", "cuda:1")
    with pytest.raises(NoFreeDevice, match="all 2 GPUs"):
        claim_device("auto", tmp_path, 2)
    held_first.close()  # the worker on cuda:0 ended
    assert claim_device("auto", tmp_path, 2)[0] == "cuda:0"
    held_second.close()


def test_a_killed_worker_releases_its_gpu(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from worker.gpu import claim_device; "
            f"h = claim_device('auto', pathlib.Path({str(tmp_path)!r}), 1); "
            "print(h[0], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "cuda:0"
    with pytest.raises(NoFreeDevice):
        claim_device("auto", tmp_path, 1)
    holder.kill()
    holder.wait()
    assert claim_device("auto", tmp_path, 1)[0] == "cuda:0"
