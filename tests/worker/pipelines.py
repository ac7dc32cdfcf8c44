"""The inference pipeline as the worker unit tests build it: small limits, a fake or real
loader, masks under the test's folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fake_classifier import FakeLoader
from sqlalchemy.orm import Session, sessionmaker

from mdf.imaging.quality import QualityThresholds
from worker.inference import Pipeline
from worker.serving import ModelServer


def make_pipeline(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    loader: FakeLoader | None = None,
    *,
    worker: str = "w1@host",
    model_dir: Path | None = None,
    max_file_bytes: int = 1_000_000,
    referral_defaults: Mapping[str, float] | None = None,
) -> Pipeline:
    """``referral_defaults``: the referable labels and their thresholds when the served
    version recorded none (default: inherited from 0.5)."""
    server = ModelServer(
        sessions,
        model_dir=model_dir or tmp_path / "base",
        device="cpu",
        vision_tiles=1,
        loader=loader,
    )
    return Pipeline(
        sessions=sessions,
        server=server,
        masks_dir=tmp_path / "masks",
        max_attempts=3,
        max_pixels=10_000_000,
        max_frames=64,
        max_file_bytes=max_file_bytes,
        max_new_tokens=4,
        lease_s=300,
        worker=worker,
        quality=QualityThresholds(),
        referral_defaults={"inherited": 0.5} if referral_defaults is None else referral_defaults,
    )
