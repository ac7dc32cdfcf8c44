"""``mdf report``: the page shows the database's figures, is self-contained and escaped,
renders in headless Chromium without console messages, and names no patient."""

from __future__ import annotations

import base64
import csv
import os
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
    """What a reader finds: ``data-figure`` numbers, pictures in order, every URL, the
    images (class and source), the patients' rows in order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self.pictures: list[int] = []
        self.urls: list[str] = []
        self.images: list[tuple[str | None, str]] = []
        self.studies: list[int] = []
        self._figure: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self._figure = found.get("data-figure")
        if "data-image" in found:
            self.pictures.append(int(found["data-image"] or 0))
        if "data-study" in found:
            self.studies.append(int(found["data-study"] or 0))
        if tag == "img":
            self.images.append((found.get("class"), found.get("src") or ""))
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        if self._figure:
            self.figures.setdefault(self._figure, []).append(data.strip())
            self._figure = None

    def one(self, figure: str) -> str:
        (value,) = self.figures[figure]
        return value


#: The shown prediction's screening columns and the true labels of night-1 (analyst_rows):
#: S1's right eye is referable (s1_r1) and truly so; its left eye is ungradable (s1_l1
#: too dark, s1_l2 failed) and truly not referable; S2 is pending (an image still queued).
SCREENING = {
    "s1_r1": {"gradable": True, "referable": True, "referral_probability": 0.8},
    "s1_r2": {"gradable": True, "referable": False, "referral_probability": 0.05},
    "s1_l1": {"gradable": False, "quality_reason": "too_dark,out_of_focus"},
    "s2_l1": {"gradable": True, "referable": False, "referral_probability": 0.3},
}
LABELS = {"s1_r1": "inherited", "s1_r2": "acquired", "s1_l1": "acquired"}
LABELS |= {"s1_l2": "acquired", "s2_l1": "acquired"}
BAND = slice(60, 90)  # the columns of s1_r2's 96x72 photograph where the vessels are


@pytest.fixture
def night(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The constructed nights with labels, gradability and referrals, masks at the source's
    resolution, a moved source file and hostile text."""
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    monkeypatch.setenv("MDF_DATA_DIR", str(tmp_path / "data"))
    sessions = session_factory(database_url)
    ids = add_nights(sessions, tmp_path / "inbox")
    (tmp_path / "inbox" / "s1_r1.jpg").unlink()
    vessels = np.zeros((72, 96), dtype=np.uint8)
    vessels[:, BAND] = 255
    masks = []
    for channel, plane in (("vessels", vessels), ("lesions", np.zeros_like(vessels))):
        masks.append(tmp_path / "masks" / "v2" / f"{ids['s1_r2']}.{channel}.png")
        masks[-1].parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(plane).save(masks[-1])
    with sessions.begin() as session:
        session.execute(
            sa.update(Prediction)
            .where(Prediction.image_id == ids["s1_r2"])
            .values(mask_path=";".join(map(str, masks)))
        )
        session.execute(
            sa.update(Prediction)
            .where(Prediction.image_id == ids["s2_l1"])
            .values(generated_text="<script>alert('x')</script> & more")
        )
        for name, values in SCREENING.items():  # on every prediction: the shown one too
            session.execute(
                sa.update(Prediction).where(Prediction.image_id == ids[name]).values(**values)
            )
        for name, label in LABELS.items():
            session.execute(sa.update(Image).where(Image.id == ids[name]).values(label=label))
    return ids


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


def report(mdf: Mdf, out: Path, batch: str = "night-1") -> str:
    assert mdf("report", batch, "--out", str(out)) == (0, f"{out}\n", "")
    return out.read_text(encoding="utf-8")


def decoded(uri: str) -> PILImage.Image:
    return PILImage.open(BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_report_shows_the_batch(night: dict[str, int], tmp_path: Path, mdf: Mdf) -> None:
    html = report(mdf, tmp_path / "night-1.html")
    page = Page(html)
    statuses = {"registered": "0", "queued": "1", "processing": "0", "done": "4"}
    statuses |= {"rejected": "1", "failed": "1"}
    assert {s: page.one(f"status:{s}") for s in statuses} == statuses
    assert page.one("images") == "7"
    # s1_l1 is ungradable: its label is not a result
    assert (page.one("label:acquired"), page.one("label:inherited")) == ("1", "2")
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
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    assert "http" not in html  # nothing to fetch: no URL at all


def test_report_shows_gradability_decisions_patients_and_validation(
    night: dict[str, int], tmp_path: Path, mdf: Mdf
) -> None:
    page = Page(report(mdf, tmp_path / "night-1.html"))
    gradability = {"assessed": "4", "gradable": "3", "gradable_rate": "75.0%"}
    gradability |= {"ungradable:too_dark": "1", "ungradable:out_of_focus": "1"}
    assert {f: page.one(f) for f in gradability} == gradability
    decisions = {"decision:refer": "1", "decision:no_refer": "0", "decision:pending": "1"}
    assert {f: page.one(f) for f in decisions} == decisions
    with session_factory(os.environ["MDF_DATABASE_URL"])() as session:
        s1, s2 = (
            session.scalar(sa.select(Image.study_id).where(Image.id == night[name]))
            for name in ("s1_r1", "s2_l1")
        )
    assert page.studies == [s1, s2]  # the referred patient first
    assert (page.one(f"decision-of:{s1}"), page.one(f"decision-of:{s2}")) == ("refer", "pending")
    html = (tmp_path / "night-1.html").read_text()
    assert 'title="' + "s1" * 16 + '"' in html and 'title="' + "s2" * 16 + '"' in html
    assert "right eye referable, left eye ungradable" in html
    # by hand: eyes S1-R referable and referred (TP), S1-L not referable but ungradable
    # (FP), S2-L not referable and not referred (TN); patients: S1 (TP), S2 pending
    validation = {"n": "3", "tp": "1", "fn": "0", "fp": "1", "tn": "1"}
    validation |= {"accuracy": "66.7%", "sensitivity": "100.0%", "specificity": "50.0%"}
    assert {k: page.one(f"validation:eyes:{k}") for k in validation} == validation
    patients = {"n": "1", "tp": "1", "fn": "0", "fp": "0", "tn": "0"}
    patients |= {"accuracy": "100.0%", "sensitivity": "100.0%", "specificity": "-"}
    assert {k: page.one(f"validation:patients:{k}") for k in patients} == patients
    unlabelled = report(mdf, tmp_path / "night-2.html", "night-2")  # no ground truth
    assert "Validation" not in unlabelled and "validation:" not in unlabelled


def test_report_lays_each_mask_over_its_photograph(
    night: dict[str, int], tmp_path: Path, mdf: Mdf
) -> None:
    page = Page(report(mdf, tmp_path / "night-1.html"))
    # referred patient S1's images (left eye first), then the least certain; a moved or
    # never-written source file is a placeholder
    referred = [night[n] for n in ("s1_l1", "s1_l2", "s1_r1", "s1_r2")]
    assert page.pictures == [*referred, night["s2_l1"], night["s1_r1"], night["s1_r2"]]
    assert all(url.startswith("data:image/jpeg;base64,") for url in page.urls)
    kinds = [kind for kind, _ in page.images]
    assert kinds == [None, None, "overlay", None, None, "overlay"]
    overlays = [decoded(uri) for kind, uri in page.images if kind == "overlay"]
    sources = [decoded(uri) for kind, uri in page.images if kind is None]
    assert all(max(p.size) <= 160 for p in sources)
    photograph = np.asarray(PILImage.open(tmp_path / "inbox" / "s1_r2.jpg"), dtype=float)
    for overlay in overlays:
        assert overlay.size == (96, 72)  # a thumbnail no larger than the photograph
        pixels = np.asarray(overlay, dtype=float)
        band, rest = pixels[:, BAND.start + 2 : BAND.stop - 2], pixels[:, : BAND.start - 2]
        red, green, blue = band.reshape(-1, 3).mean(axis=0)
        assert red < 80 and green > 190 and blue > 190  # cyan where the vessels are
        difference = rest - photograph[:, : BAND.start - 2]
        assert np.abs(difference).mean() < 12  # the photograph where the model saw nothing
    html = (tmp_path / "night-1.html").read_text()
    assert html.count("source file unavailable") == 3  # s1_r1 twice, s1_l2 never written
    assert "ungradable</strong> (too_dark,out_of_focus; v2)" in html
    assert "failed</strong> (decode_error)" in html
    assert "vessels" in html and "lesions" in html  # the legend names the channels


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
        decided = dict(
            session.execute(
                sa.text("SELECT study, decision FROM screening_outcomes WHERE batch = 'night-1'")
            ).all()
        )
    assert {s: int(rendered.one(f"status:{s}")) for s in expected} == expected
    assert int(rendered.one("images")) == sum(expected.values())
    assert {k: int(rendered.one(f"label:{k}")) for k in labels} == labels
    assert len(rendered.figures["problem"]) == expected["rejected"] + expected["failed"]
    assert {study: rendered.one(f"decision-of:{study}") for study in rendered.studies} == decided
    assert rendered.one("validation:eyes:n") == "3"
    assert [kind for kind, _ in rendered.images].count("overlay") == 2


def test_outputs_name_no_patient(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mdf: Mdf,
) -> None:
    """Synthetic deliveries carry the patient ID in folder names, study ids and DICOM
    names: only pseudonyms may come out, in results and report alike, the report's
    per-patient table, pictures and validation included."""
    inbox = write_dataset(tmp_path / "inbox", 4, size=96, seed=3, write_masks=False)
    with (inbox / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = {row["patient_id"] for row in rows}
    identifying = patients | {row["study_id"] for row in rows} | {str(inbox)}
    identifying |= {Path(row["file"]).name for row in rows}
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
            mask = tmp_path / "data" / "masks" / "v1" / f"{image.id}.vessels.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(np.eye(96, dtype=np.uint8) * 255).save(mask)
            image.predictions = [
                Prediction(
                    model_version=version,
                    label="acquired",
                    probability=0.7,
                    probabilities={"acquired": 0.7, "inherited": 0.3},
                    generated_text="acquired",
                    text_agrees=True,
                    mask_path=str(mask),
                    gradable=True,
                    quality_score=0.9,
                    referable=image.laterality == "R",  # every patient referred
                    referral_probability=0.6,
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
    page = Page(outputs["report"])
    assert len(page.studies) == 2 and page.one("decision:refer") == "2"
    assert page.one("validation:patients:n") == "2"  # the manifest's labels: validation
    assert [kind for kind, _ in page.images].count("overlay") == 8  # 4 referred, 4 uncertain
    for name, text in outputs.items():
        assert not [p for p in patients if p in text], name
    assert not [text for text in identifying if text in outputs["report"]]
    assert all(p in outputs["csv"] and p in outputs["report"] for p in pseudonyms)
