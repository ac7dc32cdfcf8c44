"""The run-batch summary: what deliveries named is printed without its terminal controls, and
a validation night shows its referrals against the labels."""

from __future__ import annotations

from pathlib import Path

from db.screening import Agreement, Validation
from scheduler.batch_summary import Problem, Summary
from scheduler.registrar import IngestReport

ERASE_AND_LIE = "x.jpg\x1b[2K\x1b[1A\rall images classified\u202e"


def summary(**changes: object) -> Summary:
    values: dict[str, object] = {
        "batch": "night",
        "report": IngestReport(batch="night", batch_id=1, files=1, rejected=1),
        "counts": {
            "registered": 0,
            "queued": 0,
            "processing": 0,
            "done": 0,
            "rejected": 1,
            "failed": 0,
        },
        "labels": [],
        "problems": [],
        "decisions": {"refer": 0, "no_refer": 0, "pending": 0},
        "validation": None,
        "referable_labels": ["inherited"],
        "database": "sqlite:///x",
        "masks_dir": Path("/masks"),
        "seconds": 1.0,
        "workers": "1 local worker",
    }
    return Summary(**(values | changes))  # type: ignore[arg-type]


def test_hostile_file_names_and_reasons_cannot_rewrite_the_operators_screen() -> None:
    problem = Problem("rejected", ERASE_AND_LIE, "not_an_image", f"bad {ERASE_AND_LIE}")
    text = summary(problems=[problem]).render()
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\u202e" not in text
    assert "x.jpgall images classified" in text  # the name is still there, harmless


def test_a_validation_night_shows_referral_against_the_labels_per_eye_and_patient() -> None:
    validation = Validation(
        eyes=Agreement(10, ((6, 2), (1, 1)), 0.7, 0.5, 0.75),
        patients=Agreement(5, ((1, 1), (0, 3)), 0.8, 1.0, 0.5),
    )
    text = summary(
        decisions={"refer": 4, "no_refer": 2, "pending": 1},
        validation=validation,
        referable_labels=["inherited", "other"],
        labels=[("v1", "acquired", 3), ("v1", None, 1)],
    ).render()
    lines = text.splitlines()
    assert "patients (a study each, screening_outcomes): 4 refer, 2 no_refer, 1 pending" in lines
    start = lines.index(
        "validation against the manifest's labels (referable: inherited, other; "
        "ungradable counts as referred):"
    )
    assert [line.split() for line in lines[start + 1 : start + 4]] == [
        ["n", "accuracy", "sensitivity", "specificity", "TP", "FN", "FP", "TN"],
        ["eyes", "10", "0.700", "0.500", "0.750", "1", "1", "2", "6"],
        ["patients", "5", "0.800", "1.000", "0.500", "3", "0", "1", "1"],
    ]
    assert "  (no answer)                   1  v1" in lines  # an ungradable picture refused


def test_a_night_without_labels_shows_no_validation() -> None:
    text = summary().render()
    assert "validation" not in text and "0 refer, 0 no_refer, 0 pending" in text
