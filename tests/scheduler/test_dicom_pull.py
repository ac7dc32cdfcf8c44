"""`mdf pull` against a real Orthanc PACS with its DICOMweb plugin, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless, RLELossless
from sqlalchemy import select

from db.models import Image, ImageStatus
from db.session import session_factory
from mdf.settings import Settings
from scheduler.service import Scheduler
from tests.dicom_peers import Orthanc, write_instances
from tests.in_process import mdf_command

MARCH = datetime(2026, 3, 10, 9, 30)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()


def registered(settings: Settings) -> Counter[str | None]:
    """Images per SOP Instance UID."""
    with session_factory(settings.resolved_database_url)() as session:
        return Counter(session.scalars(select(Image.sop_uid)))


def pulled_files(settings: Settings) -> dict[Path, int]:
    """The spool's pulled files with their modification times."""
    folder = settings.resolved_dicom_spool_dir / "pulled"
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*.dcm")}


def test_a_pull_takes_the_window_and_modalities_and_a_second_transfers_nothing(
    settings: Settings,
    broker: redis.Redis,
    orthanc: Orthanc,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    camera = tmp_path / "camera"
    march: dict[Path, str] = {}
    for seed, syntax in enumerate(("explicit", "jpeg-ls", "rle")):
        march |= write_instances(
            camera / syntax,
            2,
            study_uid=f"1.2.3.{seed + 1}",
            acquired=MARCH,
            seed=seed,
            transfer_syntax=syntax,
        )
    old = write_instances(
        camera / "old", 2, study_uid="1.2.3.5", acquired=datetime(2025, 1, 2), seed=5
    )
    secondary = write_instances(
        camera / "sc",
        2,
        study_uid="1.2.3.6",
        acquired=MARCH,
        sop_class="sc",
        laterality="U",
        seed=6,
    )
    orthanc.upload([*march, *old, *secondary])
    window = ["--since", "2026-03-01", "--until", "2026-03-31"]

    with mdf_command(capsys) as mdf:
        code, out, err = mdf("pull", "--dicomweb", orthanc.dicomweb, *window, "--modality", "OP")
        assert code == 0, err
        assert f"{len(march)} instances found, 0 already held, {len(march)} retrieved" in out
        assert registered(settings) == Counter(march.values())
        before = pulled_files(settings)

        code, out, err = mdf("pull", "--dicomweb", orthanc.dicomweb, *window, "--modality", "OP")
        assert code == 0, err
        assert f"{len(march)} already held, 0 retrieved, 0 failed" in out
        assert "0 new images" in out
        assert pulled_files(settings) == before  # nothing written again

        code, out, err = mdf("pull", "--dicomweb", orthanc.dicomweb, *window, "--modality", "OP,OT")
        assert code == 0, err
    assert registered(settings) == Counter([*march.values(), *secondary.values()])
    syntaxes = {dcmread(path).file_meta.TransferSyntaxUID for path in pulled_files(settings)}
    assert {JPEGLSLossless, RLELossless} <= syntaxes  # as stored, not transcoded
    with session_factory(settings.resolved_database_url)() as session:
        assert set(session.scalars(select(Image.status))) == {ImageStatus.QUEUED}


def test_basic_authentication_comes_from_a_secret_file(
    settings: Settings,
    broker: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pacs = Orthanc(tmp_path / "orthanc", users={"mdf": "s3cret-pacs-password"})
    pacs.start()
    try:
        files = write_instances(tmp_path / "camera", 2, study_uid="1.2.3.8", acquired=MARCH)
        pacs.upload(list(files))
        password = tmp_path / "password"
        window = ["--since", "2026-03-10", "--until", "2026-03-10"]
        monkeypatch.setenv("MDF_DICOMWEB_USERNAME", "mdf")
        monkeypatch.setenv("MDF_DICOMWEB_PASSWORD_FILE", str(password))
        monkeypatch.setenv("MDF_DICOMWEB_RETRIES", "0")
        password.write_text("wrong-password\n")
        with mdf_command(capsys) as mdf:
            code, _, err = mdf("pull", "--dicomweb", pacs.dicomweb, *window)
            assert code == 2 and "401" in err and "wrong-password" not in err
            password.write_text("s3cret-pacs-password\n")
            code, out, err = mdf("pull", "--dicomweb", pacs.dicomweb, *window)
            assert code == 0, err
    finally:
        pacs.stop()
    assert "2 retrieved" in out
    assert registered(settings) == Counter(files.values())


@pytest.mark.slow
def test_a_pull_retries_with_backoff_until_the_pacs_answers(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    pacs = Orthanc(tmp_path / "orthanc")
    files = write_instances(tmp_path / "camera", 3, study_uid="1.2.3.9", acquired=MARCH)
    pacs.start()
    pacs.upload(list(files))
    pacs.stop()  # the PACS goes down with the instances stored
    command = [sys.executable, "-m", "mdf.cli", "pull", "--dicomweb", pacs.dicomweb]
    command += ["--since", "2026-03-01", "--until", "2026-03-31"]
    pull = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # the first tries meet a closed port
        pacs.start()
        err = pull.communicate(timeout=120)[1]
    finally:
        pacs.stop()
    assert pull.returncode == 0, err
    assert registered(settings) == Counter(files.values())


def test_a_pacs_that_never_answers_fails_the_pull_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    url = Orthanc(tmp_path / "orthanc").dicomweb  # configured, never started
    env = {**os.environ, "MDF_DICOMWEB_RETRIES": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mdf.cli", "pull", "--dicomweb", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    *retries, last = result.stderr.strip().splitlines()
    assert last.startswith(f"mdf pull: {url}: ConnectionError")
    assert len(retries) == 1 and "Retrying" in retries[0]  # logged as it happens


def test_the_nightly_scan_pulls_the_configured_sources_first(
    settings: Settings, broker: redis.Redis, orthanc: Orthanc, tmp_path: Path
) -> None:
    today = datetime.now(UTC).replace(tzinfo=None)
    files = write_instances(tmp_path / "camera", 2, study_uid="1.2.3.10", acquired=today)
    orthanc.upload(list(files))
    nightly = settings.model_copy(update={"dicomweb_sources": [orthanc.dicomweb]})
    reports = Scheduler(nightly).scan_inboxes()
    assert [report.images for report in reports] == [2]
    assert registered(settings) == Counter(files.values())


class _RecordingQido(BaseHTTPRequestHandler):
    """A DICOMweb server that holds no series and remembers who asked."""

    authorizations: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.authorizations.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


def test_a_bearer_token_comes_from_a_secret_file(
    settings: Settings,
    broker: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = tmp_path / "token"
    token.write_text("eyJ.token.value\n")
    monkeypatch.setenv("MDF_DICOMWEB_TOKEN_FILE", str(token))
    _RecordingQido.authorizations.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingQido)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        with mdf_command(capsys) as mdf:
            code, out, err = mdf("pull", "--dicomweb", url, "--modality", "OP,XC")
    finally:
        server.shutdown()
    assert code == 0, err
    assert "0 instances found" in out
    assert _RecordingQido.authorizations == ["Bearer eyJ.token.value"] * 2  # one per modality
