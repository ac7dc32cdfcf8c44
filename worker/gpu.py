"""Which GPU this worker uses, when operators scale workers rather than naming GPUs.

``docker compose up --scale worker=N`` starts N identical containers; Docker cannot
give each replica a different GPU, so every replica sees all of them. With
``MDF_DEVICE=auto`` each worker takes the first GPU nobody holds, by an exclusive
``flock`` on ``<data dir>/gpus/cuda-<i>.lock`` in the shared data volume. The kernel
drops the lock when the process ends, however it ends, so a killed worker frees its
GPU for the next one.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class NoFreeDevice(RuntimeError):
    """Every GPU is held by another worker."""


def claim_device(requested: str, lock_dir: Path, device_count: int) -> tuple[str, IO[str] | None]:
    """The device to serve on and the open lock file that holds it (keep it open)."""
    if requested != "auto":
        return requested, None
    if device_count == 0:
        return "cpu", None
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(device_count):
        handle = (lock_dir / f"cuda-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{index}\n")
        handle.flush()
        return f"cuda:{index}", handle
    raise NoFreeDevice(
        f"all {device_count} GPUs are held by other workers (locks in {lock_dir}); "
        "scale the workers to at most one per GPU"
    )
