"""What analysts receive holds no identifying value, no terminal control and no formula.

Every identifying column of ``db.identifying`` is filled with a patient's name; the
views, every export format, the report and the log lines must not pass it on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from analyst_rows import add_nights
from in_process import Mdf, mdf_command

from db.identifying import ANALYST_VIEWS, IDENTIFYING
from db.models import Image, ImagePath, Prediction
from db.session import make_engine, session_factory
from mdf.terminal import csv_cell, printable

NAME = "DOE^JANE"


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


@pytest.fixture
def night(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    monkeypatch.setenv("MDF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MDF_LOG_FORMAT", "json")
    return add_nights(session_factory(database_url), tmp_path / "inbox")


def test_no_output_carries_an_identifying_value(
    night: dict[str, int], database_url: str, tmp_path: Path, mdf: Mdf
) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        image = session.get(Image, night["s1_r1"])
        assert image is not None
        session.add(ImagePath(image=image, batch=image.batch, path=f"/inbox/{NAME}/r.jpg"))
        for column in IDENTIFYING:
            if column.class_ is not ImagePath:
                table = column.class_
                value = sa.literal(f"{NAME} {column.key} ") + sa.cast(table.id, sa.String)
                session.execute(sa.update(table).values({column.key: value}))  # unique
    engine = make_engine(database_url)
    with engine.connect() as connection:
        for view in ANALYST_VIEWS:
            rows = connection.execute(sa.text(f"SELECT * FROM {view}")).all()
            assert rows and NAME not in repr(rows), view
    engine.dispose()

    outputs = []
    for fmt in ("table", "csv", "json"):
        code, out, err = mdf("results", "--format", fmt)
        assert code == 0 and str(night["s1_r1"]) in out
        outputs += [out, err]
    parquet = tmp_path / "all.parquet"
    outputs += mdf("results", "--format", "parquet", "--out", str(parquet))[1:]
    outputs.append(repr(pq.read_table(parquet).to_pylist()))
    report = tmp_path / "night-1.html"
    outputs += mdf("report", "night-1", "--out", str(report))[1:]
    outputs.append(report.read_text(encoding="utf-8"))
    outputs += mdf("status")[1:]
    assert [text for text in outputs if NAME in text] == []


def test_terminal_text_and_csv_cells_are_made_harmless() -> None:
    assert printable("ok\x1b[2K\r\x1b]0;x\x07\x9b\u202eevil\n") == "okevil"
    assert printable("a\nb\tc", keep="\n") == "a\nbc"
    assert [csv_cell(v) for v in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "ok", -1)] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "ok",
        -1,
    ]


def test_results_neutralise_hostile_text(
    night: dict[str, int], database_url: str, mdf: Mdf
) -> None:
    hostile = '=HYPERLINK("http://x","open")\x1b[2K'
    with session_factory(database_url).begin() as session:
        session.execute(
            sa.update(Prediction)
            .where(Prediction.image_id == night["s2_l1"])
            .values(generated_text=hostile)
        )
        session.execute(
            sa.update(Image).where(Image.id == night["rejected"]).values(reason="-2+3\x1b[31m")
        )
    code, out, _ = mdf("results", "--batch", "night-1", "--format", "csv")
    rows = {int(r["image_id"]): r for r in csv.DictReader(io.StringIO(out))}
    assert rows[night["s2_l1"]]["generated_text"] == "'" + hostile.removesuffix("\x1b[2K")
    assert rows[night["rejected"]]["reason"] == "'-2+3"
    code, out, _ = mdf("results", "--batch", "night-1")
    assert code == 0 and "\x1b" not in out and "=HYPERLINK" in out
