"""``mdf report``: the page shows the database's figures, is self-contained and escaped,
renders in headless Chromium without console messages, and names no patient."""

from __future__ import annotations

import base64
import csv
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from analyst_rows import add_nights
from in_process import Mdf, mdf_command
from PIL import Image as PILImage

from db.models import Image, ImageStatus, ModelVersion, Prediction
from db.session import session_factory
from mdf.settings import Settings
from mdf.synthetic.delivery import write_dataset
from scheduler.intake import ingest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """What a reader finds: ``data-figure`` numbers, pictures in order, every URL."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self.pictures: list[int] = []
        self.urls: list[str] = []
        self._figure: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self._figure = found.get("data-figure")
        if "data-image" in found:
            self.pictures.append(int(found["data-image"] or 0))
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        if self._figure:
            self.figures.setdefault(self._figure, []).append(data.strip())
            self._figure = None

    def one(self, figure: str) -> str:
        (value,) = self.figures[figure]
        return value


@pytest.fixture
def night(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The constructed nights with a mask, a moved source file and hostile text."""
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    monkeypatch.setenv("MDF_DATA_DIR", str(tmp_path / "data"))
    sessions = session_factory(database_url)
    ids = add_nights(sessions, tmp_path / "inbox")
    (tmp_path / "inbox" / "s1_r1.jpg").unlink()
    mask = tmp_path / "masks" / "v2" / f"{ids['s1_l1']}.png"
    mask.parent.mkdir(parents=True)
    PILImage.fromarray(np.eye(64, dtype=np.uint8)).save(mask)
    with sessions.begin() as session:
        session.execute(
            sa.update(Prediction)
            .where(Prediction.image_id == ids["s1_l1"])
            .values(mask_path=str(mask))
        )
        session.execute(
            sa.update(Prediction)
            .where(Prediction.image_id == ids["s2_l1"])
            .values(generated_text="<script>alert('x')</script> & more")
        )
    return ids


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


def report(mdf: Mdf, out: Path, batch: str = "night-1") -> str:
    assert mdf("report", batch, "--out", str(out)) == (0, f"{out}\n", "")
    return out.read_text(encoding="utf-8")


def test_report_shows_the_batch(night: dict[str, int], tmp_path: Path, mdf: Mdf) -> None:
    html = report(mdf, tmp_path / "night-1.html")
    page = Page(html)
    statuses = {"registered": "0", "queued": "1", "processing": "0", "done": "4"}
    statuses |= {"rejected": "1", "failed": "1"}
    assert {s: page.one(f"status:{s}") for s in statuses} == statuses
    assert page.one("images") == "7"
    assert (page.one("label:acquired"), page.one("label:inherited")) == ("1", "3")
    # v1 predicted two of night 1's images (one text disagrees), v2 three
    assert [
        page.one(f"version:{v}:{f}") for v in ("v1", "v2") for f in ("images", "agreement")
    ] == [
        "2",
        "50.0%",
        "3",
        "100.0%",
    ]
    assert page.figures["problem"] == [str(night["s1_l2"]), str(night["rejected"])]
    assert "JPEG file ends before its data" in html
    # least certain first; the moved file is a placeholder, the mask sits beside its image
    assert page.pictures == [night[n] for n in ("s2_l1", "s1_l1", "s1_r1", "s1_r2")]
    assert html.count("source file unavailable") == 1
    assert [url.split(";")[0] for url in page.urls] == ["data:image/jpeg"] * 2 + [
        "data:image/png",
        "data:image/jpeg",
    ]
    for url in page.urls:
        with PILImage.open(BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
            assert max(picture.size) <= 160
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    assert "http" not in html  # nothing to fetch: no URL at all


def test_report_command(night: dict[str, int], tmp_path: Path, mdf: Mdf) -> None:
    code, out, _ = mdf("report", "night-1")
    assert code == 0 and out == f"{tmp_path / 'data' / 'reports' / 'night-1.html'}\n"
    assert mdf("report", "no such night") == (
        2,
        "",
        "mdf report: no batch is named 'no such night'\n",
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_report_renders_in_chromium(
    night: dict[str, int], database_url: str, tmp_path: Path, mdf: Mdf
) -> None:
    html = report(mdf, tmp_path / "night-1.html")
    run = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            (tmp_path / "night-1.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [line for line in run.stderr.splitlines() if re.search("CONSOLE|Uncaught", line)]
    assert console == []
    rendered = Page(run.stdout)
    assert rendered.pictures and len(run.stdout) > len(html) // 2  # Chromium parsed the page
    with session_factory(database_url)() as session:
        expected = dict(
            session.execute(
                sa.text(
                    "SELECT status, count(*) FROM study_results WHERE batch = 'night-1' "
                    "GROUP BY status"
                )
            ).all()
        )
        labels = dict(
            session.execute(
                sa.text(
                    "SELECT label, count(*) FROM study_results "
                    "WHERE batch = 'night-1' AND label IS NOT NULL GROUP BY label"
                )
            ).all()
        )
    assert {s: int(rendered.one(f"status:{s}")) for s in expected} == expected
    assert int(rendered.one("images")) == sum(expected.values())
    assert {k: int(rendered.one(f"label:{k}")) for k in labels} == labels
    assert len(rendered.figures["problem"]) == expected["rejected"] + expected["failed"]


def test_outputs_name_no_patient(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mdf: Mdf,
) -> None:
    """Synthetic deliveries carry the patient ID in folder names, study ids and DICOM
    names: only pseudonyms may come out, in results and report alike."""
    inbox = write_dataset(tmp_path / "inbox", 4, size=96, seed=3, write_masks=False)
    with (inbox / "manifest.csv").open(newline="") as handle:
        patients = {row["patient_id"] for row in csv.DictReader(handle)}
    (inbox / f"{min(patients)}_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        pseudonym_key=secrets.token_hex(32),
        intake_processes=1,
    )
    sessions = session_factory(database_url)
    ingest(inbox, settings=settings, sessions=sessions, batch_name="night")
    with sessions.begin() as session:
        version = ModelVersion(name="v1", path="/ckpt", manifest_sha256="1" * 64)
        images = session.scalars(sa.select(Image).where(Image.status == ImageStatus.REGISTERED))
        for image in images:
            image.status = ImageStatus.DONE
            image.predictions = [
                Prediction(
                    model_version=version,
                    label="acquired",
                    probability=0.7,
                    probabilities={"acquired": 0.7, "inherited": 0.3},
                    generated_text="acquired",
                    text_agrees=True,
                )
            ]
        stored = session.execute(sa.select(Image.source_path, Image.patient_pseudonym)).all()
    # the database does hold identity in paths; the outputs must not pass it on
    assert all(any(p in path for p in patients) for path, _ in stored)
    pseudonyms = {pseudonym for _, pseudonym in stored if pseudonym}
    assert len(pseudonyms) == len(patients) == 2

    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    capsys.readouterr()  # intake's own log lines are not the outputs under test
    outputs = {fmt: mdf("results", "--format", fmt)[1] for fmt in ("table", "csv", "json")}
    outputs["report"] = report(mdf, tmp_path / "night.html", "night")
    assert "truncated" in outputs["report"] and "acquired" in outputs["table"]
    for name, text in outputs.items():
        assert not [p for p in patients if p in text], name
    assert all(p in outputs["csv"] for p in pseudonyms)
