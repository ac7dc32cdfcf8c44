"""``mdf results`` and ``mdf outcomes``: filters, and the same rows in every format, on both
engines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analyst_rows import NIGHT_1, add_nights
from in_process import Mdf, mdf_command

from db.session import session_factory
from db.views import SCREENING_OUTCOMES, STUDY_RESULTS
from mdf.analysis.export import Filters, columns, fetch
from mdf.cli import main


@pytest.fixture
def night(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The constructed nights, in the database the ``mdf`` command reads."""
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    monkeypatch.setenv("MDF_DATA_DIR", str(tmp_path / "data"))
    return add_nights(session_factory(database_url), tmp_path / "inbox")


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


COLUMNS = columns(STUDY_RESULTS)


def _typed(text: dict[str, str], types: dict = COLUMNS) -> dict[str, object]:
    """A CSV row back in the column types: empty is None."""
    convert = {int: int, float: float, str: str, bool: {"True": True, "False": False}.get}
    convert[datetime] = datetime.fromisoformat
    return {
        name: None if text[name] == "" else convert[type_.python_type](text[name])
        for name, type_ in types.items()
    }


def test_every_format_carries_the_same_rows(
    night: dict[str, int],
    database_url: str,
    tmp_path: Path,
    mdf: Mdf,
) -> None:
    with session_factory(database_url)() as session:
        rows = fetch(session, Filters(batch="night-1"))
    assert [row["image_id"] for row in rows] == [
        night[name] for name in ("s1_r1", "s1_r2", "s1_l1", "s1_l2", "s2_l1", "s2_x1", "rejected")
    ]
    latest = {"label": "inherited", "probability": 0.8, "model_version": "v2"}
    assert {name: rows[0][name] for name in latest} == latest  # of s1_r1's two predictions
    assert rows[0]["registered_at"] == NIGHT_1 and rows[0]["text_agrees"] is True

    code, out, _ = mdf("results", "--batch", "night-1", "--format", "csv")
    assert code == 0
    assert [_typed(r) for r in csv.DictReader(io.StringIO(out))] == rows

    code, out, _ = mdf("results", "--batch", "night-1", "--format", "json")
    as_json = json.loads(out)
    for row in as_json:
        for name in ("registered_at", "predicted_at"):
            row[name] = row[name] and datetime.fromisoformat(row[name])
    assert as_json == rows

    parquet = tmp_path / "night.parquet"
    code, out, _ = mdf(
        "results", "--batch", "night-1", "--format", "parquet", "--out", str(parquet)
    )
    assert code == 0 and out == ""
    assert pq.read_table(parquet).to_pylist() == rows

    written = tmp_path / "night.csv"
    assert mdf("results", "--batch", "night-1", "--format", "csv", "--out", str(written))[0] == 0
    assert [_typed(r) for r in csv.DictReader(written.open(newline=""))] == rows


def _ids(mdf: Mdf, *args: str) -> list[int]:
    code, out, err = mdf("results", "--format", "json", *args)
    assert code == 0, err
    return [row["image_id"] for row in json.loads(out)]


def test_filters(night: dict[str, int], mdf: Mdf) -> None:
    def named(*names: str) -> list[int]:
        return [night[name] for name in names]

    assert _ids(mdf, "--batch", "night-2") == named("s3_r1", "s3_l1", "s1_r3")
    assert _ids(mdf, "--label", "acquired") == named("s1_r2", "s3_r1", "s3_l1")
    assert _ids(mdf, "--batch", "night-1", "--label", "inherited") == named(
        "s1_r1", "s1_l1", "s2_l1"
    )
    assert _ids(mdf, "--since", "2026-11-02") == named("s3_r1", "s3_l1", "s1_r3")
    # an offset is converted: 23:00:08+01:00 is 22:00:08 UTC, after the first of night 2
    assert _ids(mdf, "--since", "2026-11-02T23:00:08+01:00") == named("s3_l1", "s1_r3")
    assert _ids(mdf, "--limit", "2") == named("s1_r1", "s1_r2")
    assert _ids(mdf, "--batch", "night-3") == []


def test_table_is_the_default(night: dict[str, int], mdf: Mdf) -> None:
    code, out, _ = mdf("results", "--batch", "night-1")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["image", "eye", "status", "label", "prob"]
    by_id = {int(line.split()[0]): line.split() for line in lines}
    assert len(by_id) == 7
    assert by_id[night["s1_r2"]][:6] == [str(night["s1_r2"]), "R", "done", "acquired", "0.95", "v2"]
    assert by_id[night["rejected"]][1:5] == ["-", "rejected", "-", "-"]
    assert "JPEG file ends before its data" in " ".join(by_id[night["rejected"]])


def test_parquet_needs_a_file_and_keeps_types_without_rows(
    night: dict[str, int], tmp_path: Path, mdf: Mdf
) -> None:
    code, _, err = mdf("results", "--format", "parquet")
    assert code == 2 and "--out" in err
    empty = tmp_path / "empty.parquet"
    assert mdf("results", "--label", "none", "--format", "parquet", "--out", str(empty))[0] == 0
    schema = pq.read_schema(empty)
    assert schema.field("predicted_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("probability").type == pa.float64()
    assert schema.names == list(COLUMNS)


def test_a_bad_date_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["results", "--since", "yesterday"])  # argparse exits before logging is set up
    assert exit_.value.code == 2
    assert "not an ISO date" in capsys.readouterr().err


def test_outcomes_give_one_decision_per_patient_and_study(
    night: dict[str, int], database_url: str, tmp_path: Path, mdf: Mdf
) -> None:
    code, out, err = mdf("outcomes", "--format", "json")
    assert code == 0, err
    decided = {(row["batch"], row["patient_pseudonym"][:2]): row for row in json.loads(out)}
    assert {key: row["decision"] for key, row in decided.items()} == {
        ("night-1", "s1"): "no_refer",  # both eyes seen, nothing referable
        ("night-1", "s2"): "pending",  # an image still queued
        ("night-2", "s1"): "refer",  # only the right eye delivered that night
        ("night-2", "s3"): "no_refer",
    }
    assert decided["night-2", "s1"]["reason"] == "left eye missing"
    assert (decided["night-2", "s1"]["right_eye"], decided["night-2", "s1"]["left_eye"]) == (
        "not_referable",
        "missing",
    )
    assert list(json.loads(out)[0]) == list(columns(SCREENING_OUTCOMES))

    code, out, _ = mdf("outcomes", "--batch", "night-2", "--decision", "refer", "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(out))
    typed = _typed(row, columns(SCREENING_OUTCOMES))
    with session_factory(database_url)() as session:
        (expected,) = fetch(session, Filters(batch="night-2", decision="refer"), SCREENING_OUTCOMES)
    assert typed == expected

    code, out, _ = mdf("outcomes", "--batch", "night-1")
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["patient", "study", "decision"]
    assert sorted(line.split()[2] for line in lines) == ["no_refer", "pending"]
    assert all(len(line.split()[0]) == 12 for line in lines)  # a pseudonym's first 12

    parquet = tmp_path / "outcomes.parquet"
    assert mdf("outcomes", "--format", "parquet", "--out", str(parquet))[0] == 0
    assert pq.read_schema(parquet).names == list(columns(SCREENING_OUTCOMES))
