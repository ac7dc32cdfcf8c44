"""A validation night on both engines: screening_outcomes' calls against the manifest's labels,
per eye and per patient, equal to a confusion matrix worked out by hand."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Image, ImageStatus, ModelVersion, Prediction, Study
from db.screening import Agreement, decisions, validate
from db.session import session_factory


@dataclass(frozen=True)
class Shot:
    """A photograph: study, eye, true label; the worker's call when it is done."""

    study: str
    eye: str | None
    label: str | None
    status: str = "done"
    gradable: bool = True
    referable: bool = False
    batch: str = "night"


# The call per eye and study, and what it is against the truth (TP, FP, FN, TN), by hand.
SHOTS = [
    Shot("a", "R", "inherited", referable=True),  # eye TP
    Shot("a", "L", "acquired"),  # eye TN; study refer, truly referable: TP
    Shot("b", "R", "acquired", gradable=False),  # ungradable counts as referred: eye FP
    Shot("b", "L", "acquired"),  # eye TN; study refer (ungradable): FP
    Shot("c", "R", "inherited"),  # eye FN
    Shot("c", "L", "acquired", status="failed"),  # a failure is ungradable: eye FP
    # study c refers for its left eye and is truly referable: TP
    Shot("d", "R", "acquired"),  # eye TN
    Shot("d", "L", "acquired"),  # eye TN; study no_refer: TN
    Shot("e", "R", "inherited", status="queued"),  # pending: left out, and so is study e
    Shot("e", "L", "acquired"),  # eye TN
    Shot("f", "R", None),  # no truth: left out
    Shot("f", "L", None),
    Shot("g", "R", "acquired"),  # eye TN; the left eye is missing
    Shot("g", None, "inherited", referable=True),  # no eye, but refers and makes g referable
    # study g: refer, truly referable: TP
    Shot("h", "R", "inherited", referable=True, batch="other night"),  # another batch
]
EYES = ((6, 2), (1, 1))  # (TN, FP), (FN, TP)
PATIENTS = ((1, 1), (0, 3))


def add(sessions: sessionmaker[Session], shots: list[Shot]) -> None:
    with sessions.begin() as session:
        version = ModelVersion(name="v1", path="/ckpt/v1", manifest_sha256="1" * 64)
        batches: dict[str, Batch] = {}
        studies: dict[str, Study] = {}
        for number, shot in enumerate(shots):
            study = studies.setdefault(
                shot.study, Study(study_key=shot.study, patient_pseudonym=f"p-{shot.study}")
            )
            image = Image(
                batch=batches.setdefault(shot.batch, Batch(name=shot.batch, source="/inbox")),
                study=study,
                patient_pseudonym=study.patient_pseudonym,
                sha256=hashlib.sha256(str(number).encode()).hexdigest(),
                source_path=f"/inbox/{number}.jpg",
                laterality=shot.eye,
                label=shot.label,
                status=ImageStatus(shot.status),
            )
            if shot.status == "done":
                image.predictions = [
                    Prediction(
                        model_version=version,
                        label="inherited" if shot.referable else "acquired",
                        probability=0.8,
                        probabilities={"inherited": 0.8, "acquired": 0.2},
                        text_agrees=True,
                        gradable=shot.gradable,
                        quality_score=0.9 if shot.gradable else 0.1,
                        referable=shot.referable if shot.gradable else None,
                        referral_probability=0.8 if shot.referable else 0.2,
                    )
                ]
            session.add(image)


def test_referral_against_the_labels_per_eye_and_per_patient(database_url: str) -> None:
    sessions = session_factory(database_url)
    add(sessions, SHOTS)
    with sessions() as session:
        validation = validate(session, "night", ["inherited"])
        counts = decisions(session, "night")
        assert validate(session, "no such night", ["inherited"]) is None
    assert counts == {"refer": 4, "no_refer": 2, "pending": 1}
    assert validation is not None
    assert validation.eyes == Agreement(10, EYES, 7 / 10, 1 / 2, 6 / 8)
    assert validation.patients == Agreement(5, PATIENTS, 4 / 5, 3 / 3, 1 / 2)


def test_a_night_without_labels_is_no_validation_and_other_labels_refer_nothing(
    database_url: str,
) -> None:
    sessions = session_factory(database_url)
    add(sessions, [Shot("a", "R", None, referable=True), Shot("b", "R", "acquired", batch="x")])
    with sessions() as session:
        assert validate(session, "night", ["inherited"]) is None
        # with "acquired" referable, b's only eye is truly referable and not referred
        other = validate(session, "x", ["acquired"])
    assert other is not None
    assert other.eyes == Agreement(1, ((0, 0), (1, 0)), 0.0, 0.0, None)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nothing_compared_gives_no_rates(database_url: str) -> None:
    sessions = session_factory(database_url)
    add(sessions, [Shot("a", "R", "inherited", status="processing")])
    with sessions() as session:
        validation = validate(session, "night", ["inherited"])
    assert validation is not None
    assert (
        validation.eyes == validation.patients == Agreement(0, ((0, 0), (0, 0)), None, None, None)
    )
