"""Real DICOM peers for the network tests: `mdf dicom listen` as a process, dcmtk, Orthanc.

Every peer runs on loopback on a free port. The tests that need a peer's program skip,
saying which Debian package provides it, when it is not installed (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from mdf.imaging.dicom_writer import write_dicom_op

ORTHANC_DICOM_DICTIONARY = Path("/usr/share/libdcmtk17/dicom.dic")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def need(program: str, package: str) -> str:
    """The path of ``program``, or skip the test naming the package that provides it."""
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package {package}; .ci/run installs it)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def write_instances(
    folder: Path, count: int, *, study_uid: str, side: int = 64, seed: int = 0, **options: Any
) -> dict[Path, str]:
    """``count`` distinct instances of one study (OP unless ``options`` of ``write_dicom_op``
    say otherwise); returns each file's SOP Instance UID."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(count):
        sop_uid = f"{study_uid}.{i + 1}"
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        path = write_dicom_op(
            folder / f"{i:04d}",
            pixels,
            study_uid=study_uid,
            series_uid=f"{study_uid}.0",
            sop_uid=sop_uid,
            **{"laterality": "L" if i % 2 else "R", **options},
        )
        written[path] = sop_uid
    return written


class Listener:
    """`mdf dicom listen` in a subprocess, its log in a file."""

    def __init__(self, workdir: Path, port: int, env: dict[str, str]):
        self.port, self.log = port, workdir / f"listen-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mdf.cli", "dicom", "listen", "--port", str(port)],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.ready, 60, "the listener to listen")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the listener exited: {self.log.read_text()}")
        return b'"dicom_listening"' in self.log.read_bytes()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def listener(workdir: Path, **settings: str) -> Iterator[Listener]:
    """A running listener with the test's settings plus ``settings`` (MDF_ names)."""
    running = Listener(workdir, free_port(), {**os.environ, **settings})
    try:
        yield running
    finally:
        running.stop()


def orthanc_config(
    root: Path, http_port: int, dicom_port: int, users: dict[str, str] | None = None
) -> Path:
    """An Orthanc configuration on loopback with DICOMweb, its storage under ``root``;
    with ``users``, HTTP basic authentication (user: password) is required."""
    config = {
        "Name": "MDF test PACS",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "HttpServerEnabled": True,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config))
    return path


class Orthanc:
    """A real Orthanc PACS with its DICOMweb plugin, started for a test."""

    def __init__(self, root: Path, users: dict[str, str] | None = None):
        program = need("Orthanc", "orthanc")
        if not ORTHANC_DICOMWEB_PLUGIN.exists():
            pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian orthanc-dicomweb)")
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.http_port, self.dicom_port = root, free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log = root / "orthanc.log"
        self.config = orthanc_config(root, self.http_port, self.dicom_port, users)
        self.auth = next(iter(users.items())) if users else None
        self.program = program
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DCMDICTPATH": str(ORTHANC_DICOM_DICTIONARY)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, str(self.config)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self.answers, 60, "Orthanc to answer")

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def upload(self, paths: list[Path]) -> None:
        """Store files as a modality would, through Orthanc's REST API."""
        with requests.Session() as session:
            session.auth = self.auth
            for path in paths:
                session.post(f"{self.url}/instances", data=path.read_bytes()).raise_for_status()

    def instances(self) -> list[str]:
        return requests.get(f"{self.url}/instances", auth=self.auth, timeout=10).json()
