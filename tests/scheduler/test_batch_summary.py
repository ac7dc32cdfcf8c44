"""The run-batch summary prints what deliveries named: never their terminal controls."""

from __future__ import annotations

from pathlib import Path

from scheduler.batch_summary import Problem, Summary
from scheduler.registrar import IngestReport

ERASE_AND_LIE = "x.jpg\x1b[2K\x1b[1A\rall images classified\u202e"


def test_hostile_file_names_and_reasons_cannot_rewrite_the_operators_screen() -> None:
    summary = Summary(
        batch="night",
        report=IngestReport(batch="night", batch_id=1, files=1, rejected=1),
        counts={
            "registered": 0,
            "queued": 0,
            "processing": 0,
            "done": 0,
            "rejected": 1,
            "failed": 0,
        },
        labels=[],
        problems=[Problem("rejected", ERASE_AND_LIE, "not_an_image", f"bad {ERASE_AND_LIE}")],
        database="sqlite:///x",
        masks_dir=Path("/masks"),
        seconds=1.0,
        workers="1 local worker",
    )
    text = summary.render()
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\u202e" not in text
    assert "x.jpgall images classified" in text  # the name is still there, harmless
