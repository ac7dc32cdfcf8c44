"""dicom3tools' validator on an object the service wrote: its report, and the errors in it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.dataset import Dataset

from tests.dicom_peers import need


def dciodvfy(dataset: Dataset, path: Path) -> tuple[str, list[str]]:
    """Write ``dataset`` to ``path`` and validate it: the whole report, and its "Error" lines
    (violations; "Warning" lines are advisory)."""
    dataset.save_as(path, enforce_file_format=True)
    program = need("dciodvfy", "dicom3tools")
    run = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=60)
    report = run.stdout + run.stderr
    return report, [line for line in report.splitlines() if line.startswith("Error")]
