"""A small night as analysts see it: studies over both eyes, versions, a failure, a rejection.

Every value is set, timestamps included, so tests can state the exact rows the views
and exports must show. Done images get a real JPEG source (written by Pillow).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Image, ImageStatus, ModelVersion, Prediction, Study

NIGHT_1 = datetime(2026, 11, 1, 22, 0, tzinfo=UTC)
NIGHT_2 = datetime(2026, 11, 2, 22, 0, tzinfo=UTC)
OTHER = {"acquired": "inherited", "inherited": "acquired"}


@dataclass(frozen=True)
class Guess:
    """One prediction: version, label, probability of the label, minutes after the night."""

    version: str
    label: str
    probability: float
    minute: int
    agrees: bool = True


def write_jpeg(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path, "JPEG")
    return path


def add_nights(sessions: sessionmaker[Session], folder: Path) -> dict[str, int]:
    """Two nights; returns the image ids by name (``s1_r1``: study 1, right eye, first).

    night-1: study S1 (R 0.70 then 0.80 inherited, R 0.95 acquired, L 0.60 inherited,
    L failed), study S2 (L 0.55 inherited whose text disagrees, one image still queued),
    one file rejected at intake. night-2: study S3 over two versions, and one more S1
    image delivered a night later.
    """
    with sessions.begin() as session:
        versions = {
            name: ModelVersion(name=name, path=f"/ckpt/{name}", manifest_sha256=name * 32)
            for name in ("v1", "v2")
        }
        batches = {
            "night-1": Batch(name="night-1", source="/inbox/1", files_seen=8),
            "night-2": Batch(name="night-2", source="/inbox/2", files_seen=3),
        }
        studies = {
            key: Study(study_key=key, patient_pseudonym=key.lower() * 16)
            for key in ("S1", "S2", "S3")
        }
        plan = [
            # name, night, study, eye, status, predictions
            (
                "s1_r1",
                "night-1",
                "S1",
                "R",
                "done",
                [Guess("v1", "acquired", 0.7, 1), Guess("v2", "inherited", 0.8, 30)],
            ),
            ("s1_r2", "night-1", "S1", "R", "done", [Guess("v2", "acquired", 0.95, 31)]),
            ("s1_l1", "night-1", "S1", "L", "done", [Guess("v2", "inherited", 0.6, 32)]),
            ("s1_l2", "night-1", "S1", "L", "failed", []),
            (
                "s2_l1",
                "night-1",
                "S2",
                "L",
                "done",
                [Guess("v1", "inherited", 0.55, 2, agrees=False)],
            ),
            ("s2_x1", "night-1", "S2", None, "queued", []),
            ("rejected", "night-1", None, None, "rejected", []),
            ("s3_r1", "night-2", "S3", "R", "done", [Guess("v1", "acquired", 0.9, 1)]),
            ("s3_l1", "night-2", "S3", "L", "done", [Guess("v2", "acquired", 0.85, 2)]),
            ("s1_r3", "night-2", "S1", "R", "done", [Guess("v2", "inherited", 0.99, 3)]),
        ]
        ids: dict[str, int] = {}
        for number, (name, night, study, eye, status, guesses) in enumerate(plan):
            registered = NIGHT_1 if night == "night-1" else NIGHT_2
            image = Image(
                batch=batches[night],
                study=studies[study] if study else None,
                patient_pseudonym=studies[study].patient_pseudonym if study else None,
                sha256=hashlib.sha256(name.encode()).hexdigest(),
                source_path=str(folder / f"{name}.jpg"),
                laterality=eye,
                status=ImageStatus(status),
                registered_at=registered + timedelta(seconds=number),
            )
            if status == "failed":
                image.reason_code, image.reason = "decode_error", "JPEG pixels cannot be decoded"
            if status == "rejected":
                image.reason_code, image.reason = "truncated", "JPEG file ends before its data"
            if guesses:
                write_jpeg(folder / f"{name}.jpg", seed=number)
            image.predictions = [
                Prediction(
                    model_version=versions[g.version],
                    label=g.label,
                    probability=g.probability,
                    probabilities={g.label: g.probability, OTHER[g.label]: 1 - g.probability},
                    generated_text=f"The disease is {g.label if g.agrees else OTHER[g.label]}.",
                    text_label=g.label if g.agrees else OTHER[g.label],
                    text_agrees=g.agrees,
                    inference_ms=10.0 * (1 + (g.version == "v2")),
                    created_at=registered + timedelta(minutes=g.minute),
                )
                for g in guesses
            ]
            session.add(image)
            session.flush()  # ids in the order of the plan
            ids[name] = image.id
        return ids
