"""`mdf dicom listen` against dcmtk's storescu and echoscu, real processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
from scraped import by_label, scrape
from sqlalchemy import select

from db.models import Image, ImageStatus
from db.session import session_factory
from mdf.imaging.dicom_writer import TRANSFER_SYNTAXES, write_dicom_op
from mdf.settings import Settings
from tests.dicom_peers import Listener, free_port, listener, need, wait_for, write_instances

# storescu proposes uncompressed syntaxes unless told which compressed one a file holds.
PROPOSE = {
    "explicit": "-x=",
    "rle": "-xr",
    "jpeg-baseline": "-xy",
    "jpeg-ls": "-xt",
    "jpeg2000": "-xv",
}
QUIET = {"MDF_DICOM_ALLOWED_AES": "CAMERA,PACS", "MDF_DICOM_STUDY_QUIET_S": "0.5"}


@pytest.fixture
def storescu() -> str:
    return need("storescu", "dcmtk")


def send(port: int, files: list[Path], *options: str, calling: str = "CAMERA") -> str:
    """storescu's verbose output; sending goes on past a refused file."""
    command = ["storescu", "-v", "-R", *options, "-aet", calling, "-aec", "MDF", "127.0.0.1"]
    result = subprocess.run(
        [*command, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr


def images(settings: Settings) -> list[Image]:
    with session_factory(settings.resolved_database_url)() as session:
        return list(session.scalars(select(Image)))


def test_each_transfer_syntax_is_received_and_registered_without_identity_in_the_log(
    settings: Settings, broker: redis.Redis, tmp_path: Path, storescu: str
) -> None:
    assert set(PROPOSE) == set(TRANSFER_SYNTAXES)
    rng = np.random.default_rng(1)
    study = "1.2.826.0.1.3680043.8.498.1"
    files = {
        name: write_dicom_op(
            tmp_path / "camera" / name,
            rng.integers(0, 256, (80, 96, 3), dtype=np.uint8),
            transfer_syntax=name,
            study_uid=study,
            sop_uid=f"{study}.{i}",
            laterality="R",
            patient_id="PID-7741-SECRET",
            patient_name="Doe^Janet",
        )
        for i, name in enumerate(TRANSFER_SYNTAXES)
    }
    with listener(tmp_path, **QUIET) as running:
        echo = subprocess.run(
            ["echoscu", "-aet", "PACS", "-aec", "MDF", "127.0.0.1", str(running.port)],
            capture_output=True,
            text=True,
        )
        assert echo.returncode == 0, echo.stderr
        for name, path in files.items():
            output = send(running.port, [path], PROPOSE[name])
            assert "Received Store Response (Success)" in output, (name, output)
        wait_for(lambda: len(images(settings)) == len(files), 30, "intake to register them")
        wait_for(lambda: b"images_enqueued" in running.log.read_bytes(), 30, "the queueing")
    registered = images(settings)
    assert {image.sop_uid for image in registered} == {f"{study}.{i}" for i in range(5)}
    assert {image.status for image in registered} == {ImageStatus.QUEUED}
    assert {image.study_uid for image in registered} == {study}
    log = running.log.read_text()
    assert "study_handed_over" in log
    for identity in ("PID-7741-SECRET", "Doe", "Janet", study):
        assert identity not in log


@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # the network side is the engine's no matter
def test_a_calling_ae_title_not_allowed_is_refused_at_association(
    settings: Settings, broker: redis.Redis, tmp_path: Path, storescu: str
) -> None:
    files = list(write_instances(tmp_path / "camera", 2, study_uid="1.2.3.9"))
    with listener(tmp_path, **QUIET) as running:
        output = send(running.port, files, calling="INTRUDER")
        assert "Calling AE Title Not Recognized" in output
        assert "Received Store Response" not in output
        assert "association_refused" in running.log.read_text()
    spool = settings.resolved_dicom_spool_dir
    assert not [path for path in spool.rglob("*") if path.is_file()]
    assert images(settings) == []


def test_listen_refuses_to_start_without_allowed_ae_titles(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "MDF_DICOM_ALLOWED_AES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "mdf.cli", "dicom", "listen", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MDF_DICOM_ALLOWED_AES is empty" in result.stderr


def acknowledged(output: str, sop_uids: dict[Path, str]) -> set[str]:
    """The SOP Instance UIDs storescu saw a success response for."""
    done, sending = set(), None
    for line in output.splitlines():
        if match := re.search(r"Sending file: (.+)$", line):
            sending = Path(match.group(1))
        elif "Received Store Response (Success)" in line and sending is not None:
            done.add(sop_uids[sending])
    return done


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", ["postgresql"], indirect=True
)  # the network side is the engine's no matter
def test_a_listener_killed_mid_association_loses_nothing_acknowledged_and_doubles_nothing(
    settings: Settings, broker: redis.Redis, tmp_path: Path, storescu: str
) -> None:
    sent = write_instances(tmp_path / "camera", 300, study_uid="1.2.3.77", side=96)
    files = sorted(sent)
    port = free_port()
    env = {**os.environ, **QUIET, "MDF_DICOM_STUDY_QUIET_S": "60"}  # nothing handed before
    first = Listener(tmp_path, port, env)
    transcript = tmp_path / "storescu.log"
    with transcript.open("w") as out:
        sender = subprocess.Popen(
            ["storescu", "-v", "-R", "-aet", "CAMERA", "-aec", "MDF", "127.0.0.1", str(port)]
            + [str(path) for path in files],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    incoming = settings.resolved_dicom_spool_dir / "incoming"
    wait_for(lambda: len(list(incoming.rglob("*.dcm"))) >= 30, 120, "30 instances to arrive")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    sender.wait(timeout=60)
    acked = acknowledged(transcript.read_text(), sent)
    # The spool holds an instance just before its success goes out, so the kill can fall
    # between the two: the 30th instance spooled may never have been acknowledged.
    assert 29 <= len(acked) < len(files), "the kill must come mid-association"

    env["MDF_DICOM_STUDY_QUIET_S"] = "0.5"
    second = Listener(tmp_path, port, env)
    try:
        wait_for(lambda: len(images(settings)) >= len(acked), 120, "the spool to be registered")
        wait_for(lambda: b"images_enqueued" in second.log.read_bytes(), 30, "the queueing")
        after_restart = images(settings)
        # A camera whose association broke sends the whole study again.
        output = send(port, files)
        assert output.count("Received Store Response (Success)") == len(files)
        wait_for(lambda: len(images(settings)) == len(files), 120, "the resent study")
    finally:
        second.stop()
    registered = Counter(image.sop_uid for image in after_restart)
    assert acked <= set(registered), "an acknowledged instance was lost"
    assert set(registered) <= set(sent.values())
    assert max(registered.values()) == 1
    assert {image.status for image in after_restart} == {ImageStatus.QUEUED}  # nothing partial
    final = Counter(image.sop_uid for image in images(settings))
    assert set(final) == set(sent.values()) and max(final.values()) == 1
    assert not list((settings.resolved_dicom_spool_dir / "tmp").iterdir())


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (openssl), as PEM files."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA"),
        *("-keyout", "ca.key", "-out", "ca.crt"),
    )
    for name in ("server", "client"):
        openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt"),
        )
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # the network side is the engine's no matter
def test_with_a_certificate_the_listener_speaks_tls_only_to_peers_the_ca_signed(
    settings: Settings, broker: redis.Redis, tmp_path: Path, storescu: str
) -> None:
    need("openssl", "openssl")
    pem = _certificates(tmp_path / "tls")
    files = list(write_instances(tmp_path / "camera", 2, study_uid="1.2.3.11"))
    tls = {
        "MDF_DICOM_TLS_CERT_FILE": str(pem["server.crt"]),
        "MDF_DICOM_TLS_KEY_FILE": str(pem["server.key"]),
        "MDF_DICOM_TLS_CA_FILE": str(pem["ca.crt"]),
    }
    trust = ["+cf", str(pem["ca.crt"])]
    with listener(tmp_path, **QUIET, **tls) as running:
        assert "Received Store Response" not in send(running.port, files[:1])  # plain DICOM
        anonymous = send(running.port, files[:1], "+tla", *trust)
        assert "Received Store Response" not in anonymous  # no client certificate
        client = ["+tls", str(pem["client.key"]), str(pem["client.crt"]), *trust]
        output = send(running.port, files, *client)
        assert output.count("Received Store Response (Success)") == 2, output
        wait_for(lambda: len(images(settings)) == 2, 30, "intake to register them")


@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # the network side is the engine's no matter
def test_mdf_dicom_echo_checks_the_listener_and_its_metrics_count_what_it_did(
    settings: Settings, broker: redis.Redis, tmp_path: Path, storescu: str
) -> None:
    def echo(port: int, *options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mdf.cli", "dicom", "echo", "--port", str(port)]
        return subprocess.run(
            [*command, *options],
            env={**os.environ, **QUIET},
            capture_output=True,
            text=True,
            timeout=60,
        )

    files = write_instances(tmp_path / "camera", 3, study_uid="1.2.3.10")
    metrics_port = free_port()
    with listener(tmp_path, **QUIET, MDF_METRICS_PORT=str(metrics_port)) as running:
        answered = echo(running.port)  # calling as CAMERA, the first allowed AE title
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert "answered C-ECHO" in answered.stdout
        refused = echo(running.port, "--calling-ae", "INTRUDER")
        assert refused.returncode == 1
        assert "association rejected" in refused.stdout
        assert "Received Store Response (Success)" in send(running.port, list(files))
        wait_for(lambda: len(images(settings)) == 3, 30, "intake to register them")

        def handed() -> float:
            return by_label(scrape(metrics_port), "mdf_dicom_studies_total", "outcome")["handed"]

        wait_for(lambda: handed() == 1, 30, "the study to be marked handed")
        samples = scrape(metrics_port)
    assert by_label(samples, "mdf_dicom_associations_total", "outcome") == {
        "accepted": 2,  # the echo and storescu
        "refused": 1,
    }
    assert by_label(samples, "mdf_dicom_instances_total", "outcome") == {
        "stored": 3,
        "refused": 0,
    }
    assert by_label(samples, "mdf_dicom_studies_total", "outcome") == {"handed": 1, "failed": 0}
    gone = echo(running.port)
    assert gone.returncode == 1
    assert "no association" in gone.stdout
