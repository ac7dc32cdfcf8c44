"""A labelled synthetic night in the database, for the tests that train through a whole run."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from mdf.settings import Settings
from mdf.synthetic.delivery import write_dataset
from scheduler.service import Scheduler


@pytest.fixture
def labelled_night(settings: Settings, broker: redis.Redis, tmp_path: Path) -> Settings:
    inbox = write_dataset(tmp_path / "inbox", 24, seed=4, size=96, dicom_fraction=0.25)
    Scheduler(settings).ingest(inbox, "labelled")  # the manifest carries the labels
    return settings
