"""Log lines name no patient: withheld fields, database errors without their values,
library lines and warnings without quoted values, no control characters on a console."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from db.identifying import IDENTIFYING_NAMES
from db.models import Study
from db.session import session_factory
from mdf.logs import WITHHELD_FIELDS, configure_logging
from mdf.settings import Settings

CANARY = "DOE^JANE 0012345"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], io.StringIO]]:
    """Logging configured into a buffer in a format; the process's logging put back after."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)

    def configured(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(Settings(log_format=fmt), stream=stream)
        return stream

    yield configured
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_withheld_fields_cover_the_identifying_columns() -> None:
    """mdf cannot import db: this keeps the log's list and db.identifying alike."""
    assert IDENTIFYING_NAMES <= WITHHELD_FIELDS


def _duplicate_study(database_url: str) -> sa.exc.IntegrityError:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        session.add(Study(study_key=CANARY))
    with pytest.raises(sa.exc.IntegrityError) as caught, sessions.begin() as session:
        session.add(Study(study_key=CANARY))
    return caught.value


def test_database_errors_are_logged_without_values(
    database_url: str, configure: Callable[[str], io.StringIO]
) -> None:
    logged = configure("json")
    error = _duplicate_study(database_url)
    assert "hidden due to hide_parameters" in str(error)  # the engine's part
    try:
        raise RuntimeError("could not register the study") from error
    except RuntimeError:
        structlog.get_logger().exception("study_failed", source_path=f"/inbox/{CANARY}/1.dcm")
    # Celery logs a failed task's exception, repr included, through the standard library.
    logging.getLogger("celery.app.trace").error("Task failed: %r", error, exc_info=error)
    text = logged.getvalue()
    assert CANARY not in text and "DOE" not in text
    assert text.count("IntegrityError") >= 2 and "could not register the study" in text
    assert '"source_path": "[withheld]"' in text
    if database_url.startswith("postgresql"):
        assert "sqlstate=23505" in text and "constraint_name=studies_study_key_key" in text
    else:
        assert "UNIQUE constraint failed: studies.study_key" in text


def test_library_warnings_and_crashes_keep_values_out(database_url: str, tmp_path: Path) -> None:
    """A real process: pydicom warns about a PatientID it cannot read (quoting it), then
    the command dies of a database error carrying the same value."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # A patient ID stored as an integer string that is not one: pydicom quotes it.
    with pytest.warns(UserWarning, match="not valid for elements with a VR of IS"):
        dataset.add(DataElement(0x00100020, "IS", "0012345.5"))
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        dataset.save_as(tmp_path / "patient.dcm", enforce_file_format=False)
    finally:
        pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    script = textwrap.dedent(f"""
        import pydicom
        from db.models import Study
        from db.session import session_factory
        from mdf.logs import configure_logging
        from mdf.settings import Settings

        configure_logging(Settings(log_format="json"))
        assert pydicom.dcmread({str(tmp_path / "patient.dcm")!r}, force=True).PatientID == 12345.5
        sessions = session_factory({database_url!r})
        for _ in range(2):
            with sessions.begin() as session:
                session.add(Study(study_key={CANARY!r}))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "12345.5" not in run.stderr and CANARY not in run.stderr, run.stderr
    # pydicom's log line and its warning, twice: the raw value, then the number
    assert run.stderr.count("Invalid value for VR IS") == 2
    assert run.stderr.count("is not valid for elements with a VR of IS") == 2
    assert '"event": "uncaught_exception"' in run.stderr and "IntegrityError" in run.stderr


def test_console_lines_carry_no_control_characters(
    configure: Callable[[str], io.StringIO],
) -> None:
    stream = configure("console")
    structlog.get_logger().warning("file_rejected", reason="bad\x1b[2K\r\x1b]0;title\x07 \x9b")
    logging.getLogger("pydicom").warning("value \x1b[31mred\x1b[0m\u202egnp.evil")
    text = stream.getvalue()
    assert "file_rejected" in text and "bad" in text and "gnp.evil" in text
    assert not [c for c in text if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F)]
    assert "\u202e" not in text and "title" not in text
