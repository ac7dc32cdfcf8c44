"""Hostile deliveries: no entry stops a night, every one ends with a row, history stays.

Each test delivers a small night with one kind of hostile entry beside good photographs
and checks the code recorded for it, that the rest of the night is registered, and
that the delivered files are unchanged. Real SQLite and PostgreSQL, real processes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, text

from db.lifecycle import ImageStatus
from db.models import Image, ImagePath, Study
from db.session import make_engine, session_factory
from db.stored_path import from_stored
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.settings import Settings
from scheduler.intake import IngestReport, default_batch_name, ingest
from scheduler.pseudonym import pseudonymise

COLUMNS = ["file", "patient_id", "study_id", "laterality", "clinical_text", "label", "source"]


def fundus(seed: int, size: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 150 + rng.integers(0, 60)
    image[..., 1] = 60
    return image + rng.integers(0, 20, image.shape, dtype=np.uint8)


def photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(fundus(seed)).save(path, format="PNG")
    return path


def manifest(folder: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    path = folder / "manifest.csv"
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """Two good photographs, one in a subfolder."""
    folder = tmp_path / "inbox"
    photo(folder / "good-1.png", 1)
    photo(folder / "site" / "good-2.png", 2)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str | int, int]]:
    """Hash (size, for a sparse giant) and mtime of every regular file; links and special
    files are never opened."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = Path(directory, name)
            status = path.lstat()
            if not stat.S_ISREG(status.st_mode):
                continue
            small = status.st_size < 1 << 20
            content = hashlib.sha256(path.read_bytes()).hexdigest() if small else status.st_size
            found[str(path)] = (content, status.st_mtime_ns)
    return found


def run(settings: Settings, folder: Path, batch: str = "night") -> IngestReport:
    before = snapshot(folder)
    report = ingest(
        folder, settings=settings, sessions=session_factory(settings.resolved_database_url),
        batch_name=batch,
    )  # fmt: skip
    assert snapshot(folder) == before  # inputs are never modified
    return report


def rows(settings: Settings) -> list[Image]:
    with session_factory(settings.resolved_database_url)() as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


def paths(settings: Settings) -> list[str]:
    with session_factory(settings.resolved_database_url)() as session:
        return sorted(session.scalars(select(ImagePath.path)))


def rejected(settings: Settings) -> dict[str, Image]:
    """Rejection rows by the name of the entry they stand for."""
    return {
        from_stored(r.source_path).name: r
        for r in rows(settings)
        if r.status is ImageStatus.REJECTED
    }


def assert_good_registered(settings: Settings, *names: str) -> None:
    registered = {
        from_stored(p).name
        for r in rows(settings)
        if r.status is ImageStatus.REGISTERED
        for p in [r.source_path]
    }
    assert {"good-1.png", "good-2.png", *names} <= registered


@pytest.mark.timeout(60)
def test_a_fifo_is_never_opened(settings: Settings, inbox: Path) -> None:
    os.mkfifo(inbox / "site" / "pipe.jpg")
    report = run(settings, inbox)
    row = rejected(settings)["pipe.jpg"]
    assert (row.reason_code, row.reason) == ("special_file", "a FIFO (named pipe) is never opened")
    assert report.rejected_by_code == {"special_file": 1}
    assert_good_registered(settings)


def test_links_are_followed_only_inside_the_inbox(
    settings: Settings, inbox: Path, tmp_path: Path
) -> None:
    elsewhere = photo(tmp_path / "elsewhere" / "holiday.png", 9)
    (inbox / "escape.png").symlink_to(elsewhere)
    (inbox / "zero.jpg").symlink_to("/dev/zero")
    (inbox / "dangling.jpg").symlink_to(inbox / "gone.jpg")
    (inbox / "alias.png").symlink_to(inbox / "site" / "good-2.png")
    (inbox / "folder-link").symlink_to(inbox / "site")
    run(settings, inbox)

    found = rejected(settings)
    assert found["escape.png"].reason_code == "outside_inbox_link"
    assert found["zero.jpg"].reason_code == "outside_inbox_link"
    assert found["dangling.jpg"].reason_code == "unreadable"
    assert found["folder-link"].reason_code == "special_file"
    assert_good_registered(settings)
    # The link inside the inbox is one more path of the image it names.
    assert {Path(p).name for p in paths(settings)} >= {"alias.png", "good-2.png"}
    holiday = hashlib.sha256(elsewhere.read_bytes()).hexdigest()
    assert all(r.sha256 != holiday for r in rows(settings))


# Root reads every file and folder: as root, intake runs without the capabilities that
# let it (setpriv, from util-linux), as an ordinary user's intake would.
WITHOUT_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
INGEST = """
import sys
from pathlib import Path
from db.session import session_factory
from mdf.settings import Settings
from scheduler.intake import ingest
settings = Settings()
sessions = session_factory(settings.resolved_database_url)
ingest(Path(sys.argv[1]), settings=settings, sessions=sessions, batch_name="night")
"""


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root reads every file"
)
def test_unreadable_files_and_folders_get_rows(settings: Settings, inbox: Path) -> None:
    locked = photo(inbox / "locked" / "inside.png", 5).parent
    secret = photo(inbox / "secret.png", 6)
    locked.chmod(0)
    secret.chmod(0)
    try:
        if os.geteuid() == 0:
            command = [*WITHOUT_DAC, sys.executable, "-c", INGEST, str(inbox)]
            subprocess.run(command, check=True, capture_output=True)
        else:
            run(settings, inbox)
    finally:
        locked.chmod(0o755)
        secret.chmod(0o644)
    found = rejected(settings)
    assert found["locked"].reason_code == found["secret.png"].reason_code == "unreadable"
    assert_good_registered(settings)


def test_a_file_over_the_size_cap_is_rejected_unread(settings: Settings, inbox: Path) -> None:
    huge = inbox / "site" / "huge.jpg"
    with huge.open("wb") as handle:
        handle.truncate(1 << 40)  # a sparse terabyte: reading it whole is a memory error
    just_over = inbox / "just-over.png"
    just_over.write_bytes(b"\x89PNG" + b"\0" * 65533)
    settings = settings.model_copy(update={"max_file_bytes": 65536})
    run(settings, inbox)
    found = rejected(settings)
    assert found["huge.jpg"].reason_code == found["just-over.png"].reason_code == "file_too_large"
    assert "over the 65536-byte limit" in found["huge.jpg"].reason
    assert_good_registered(settings)


def test_a_name_that_is_not_utf8_is_stored_losslessly(settings: Settings, inbox: Path) -> None:
    odd = Path(os.fsdecode(os.fsencode(inbox) + b"/caf\xe9-\\x41.png"))
    photo(odd, 7)
    run(settings, inbox)
    row = next(r for r in rows(settings) if r.source_path.startswith("file://"))
    assert row.status is ImageStatus.REGISTERED and "caf%E9-%5Cx41.png" in row.source_path
    assert from_stored(row.source_path) == odd and from_stored(row.source_path).is_file()
    assert_good_registered(settings)
    # An unchanged odd name is recognised on the next night and not read again.
    report = run(settings, inbox, "night-2")
    assert (report.files, report.unchanged) == (0, 3)


def test_a_manifest_that_is_not_utf8_is_rejected_whole(settings: Settings, inbox: Path) -> None:
    manifest(inbox / "site", [{"file": "good-2.png", "clinical_text": "rétinopathie"}], "latin-1")
    run(settings, inbox)
    row = rejected(settings)["manifest.csv"]
    assert row.reason_code == "unreadable_manifest" and "not UTF-8" in row.reason
    assert_good_registered(settings)
    assert all(r.clinical_text is None for r in rows(settings))


def test_a_folder_named_manifest_is_recorded_and_its_files_read(
    settings: Settings, inbox: Path
) -> None:
    photo(inbox / "manifest.csv" / "inside.png", 8)
    run(settings, inbox)
    assert rejected(settings)["manifest.csv"].reason_code == "unreadable_manifest"
    assert_good_registered(settings, "inside.png")


def test_a_bad_manifest_row_is_rejected_alone(settings: Settings, inbox: Path) -> None:
    photo(inbox / "site" / "good-3.png", 3)
    photo(inbox / "site" / "good-4.png", 4)
    manifest(
        inbox / "site",
        [
            {"file": "good-2.png", "label": "x" * 65},
            {"file": "good-3.png", "laterality": "up"},
            {"file": "good-4.png", "clinical_text": "nul\x00byte"},
            {"file": "good-4.png", "label": "acquired", "laterality": "OD", "source": "s" * 100},
        ],
    )
    run(settings, inbox)
    by_line = {
        r.source_path.rsplit(":", 2)[1]: r
        for r in rows(settings)
        if "manifest.csv:" in r.source_path
    }
    assert by_line["2"].reason_code == "field_too_long" and "label is 65" in by_line["2"].reason
    assert by_line["3"].reason_code == "unknown_laterality"
    assert by_line["4"].reason_code == "bad_manifest" and "NUL" in by_line["4"].reason
    assert_good_registered(settings, "good-3.png", "good-4.png")
    described = next(r for r in rows(settings) if r.source_path.endswith("good-4.png"))
    assert (described.label, described.laterality) == ("acquired", "R")
    assert all(r.label is None for r in rows(settings) if not r.source_path.endswith("good-4.png"))


def test_a_dicom_header_field_too_long_rejects_its_file(settings: Settings, inbox: Path) -> None:
    write_dicom_op(inbox / "long-uid.dcm", fundus(11), study_uid="1.2." + "3" * 80, laterality="L")
    run(settings, inbox)
    row = rejected(settings)["long-uid.dcm"]
    assert row.reason_code == "field_too_long" and "study_uid is 84" in row.reason
    assert_good_registered(settings)


def test_manifest_study_ids_are_pseudonymised(settings: Settings, inbox: Path) -> None:
    manifest(inbox, [{"file": "good-1.png", "patient_id": "P-77", "study_id": "ACC-2024-0077"}])
    run(settings, inbox)
    key = settings.resolved_pseudonym_key()
    with session_factory(settings.resolved_database_url)() as session:
        study = session.scalars(select(Study)).one()
    assert study.study_key == pseudonymise("ACC-2024-0077", key)
    assert study.patient_pseudonym == pseudonymise("P-77", key)
    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as connection:
        dump = repr(connection.execute(text("SELECT * FROM studies")).all())
        dump += repr(connection.execute(text("SELECT * FROM images")).all())
    engine.dispose()
    assert "ACC-2024" not in dump and "P-77" not in dump


@pytest.mark.parametrize("nights", [1, 2], ids=["same-night", "next-night"])
def test_the_same_pixels_under_a_new_name_keep_the_first_metadata(
    settings: Settings, inbox: Path, nights: int
) -> None:
    first = {"file": "good-1.png", "patient_id": "P-1", "study_id": "S-1", "label": "normal",
             "clinical_text": "first visit", "laterality": "L"}  # fmt: skip
    manifest(inbox, [first])
    if nights == 2:
        run(settings, inbox, "night-1")
    (inbox / "site" / "again.png").write_bytes((inbox / "good-1.png").read_bytes())
    manifest(inbox / "site", [{"file": "again.png", "patient_id": "P-2", "label": "acquired",
                               "clinical_text": "someone else", "laterality": "L",
                               "source": "site-b"}])  # fmt: skip
    run(settings, inbox, f"night-{nights}")

    key = settings.resolved_pseudonym_key()
    image = next(r for r in rows(settings) if r.source_path.endswith("good-1.png"))
    assert (image.label, image.clinical_text, image.patient_pseudonym, image.data_source) == (
        "normal", "first visit", pseudonymise("P-1", key), None
    )  # fmt: skip
    conflict = rejected(settings)["again.png"]
    assert conflict.reason_code == "metadata_conflict"
    assert "patient_id, clinical_text, label" in conflict.reason and "P-2" not in conflict.reason
    assert {Path(p).name for p in paths(settings)} >= {"good-1.png", "again.png"}
    # The same night once more: nothing new, the conflict not doubled.
    report = run(settings, inbox, f"night-{nights}")
    assert (report.images, report.rejected) == (0, 0)
    assert sum(r.reason_code == "metadata_conflict" for r in rows(settings)) == 1


def test_a_new_name_may_fill_what_the_first_lacked(settings: Settings, inbox: Path) -> None:
    run(settings, inbox, "night-1")
    (inbox / "copy.png").write_bytes((inbox / "good-1.png").read_bytes())
    manifest(inbox, [{"file": "copy.png", "label": "normal", "study_id": "S-9"}])
    run(settings, inbox, "night-2")
    image = next(r for r in rows(settings) if r.source_path.endswith("good-1.png"))
    assert image.label == "normal" and image.study_id is not None
    assert not rejected(settings)


INGEST = """
import sys
from pathlib import Path
from db.session import session_factory
from mdf.settings import Settings
from scheduler.intake import ingest
settings = Settings()
sys.stdin.readline()  # both start together
ingest(Path(sys.argv[1]), settings=settings,
       sessions=session_factory(settings.resolved_database_url), batch_name="night")
"""


@pytest.mark.timeout(120)
def test_two_intakes_of_one_folder_at_once(settings: Settings, inbox: Path) -> None:
    for i in range(40):
        photo(inbox / f"part-{i % 4}" / f"{i:02d}.png", 100 + i)
        (inbox / f"part-{i % 4}" / f"copy-{i:02d}.png").write_bytes(
            (inbox / f"part-{i % 4}" / f"{i:02d}.png").read_bytes()
        )
    manifest(inbox, [{"file": "good-1.png", "study_id": "S-1", "label": "normal"},
                     {"file": "missing.png"}])  # fmt: skip
    before = snapshot(inbox)
    intakes = [
        subprocess.Popen(
            [sys.executable, "-c", INGEST, str(inbox)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for intake in intakes:
        assert intake.stdin is not None
        intake.stdin.write("go\n")
        intake.stdin.flush()
    for intake in intakes:
        _, errors = intake.communicate(timeout=100)
        assert intake.returncode == 0, errors
    assert snapshot(inbox) == before

    found = rows(settings)
    assert sum(r.status is ImageStatus.REGISTERED for r in found) == 42
    assert [r.reason_code for r in found if r.status is ImageStatus.REJECTED] == ["missing_file"]
    assert len(paths(settings)) == len(set(paths(settings))) == 82
    with session_factory(settings.resolved_database_url)() as session:
        assert len(session.scalars(select(Study)).all()) == 1


def test_a_folder_whose_name_is_not_utf8_names_its_batch_escaped(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    name = default_batch_name(folder)
    assert name.startswith("caf\\xe9-")
    name.encode("utf-8")  # a batches.name value the database takes
