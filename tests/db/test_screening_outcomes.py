"""screening_outcomes on both engines: a decision per patient, study and batch, with its
reason and both eyes; and study_results hiding the label of an ungradable image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from db.models import Batch, Image, ImageStatus, ModelVersion, Prediction, Study
from db.session import alembic_config, make_engine, session_factory


@dataclass(frozen=True)
class Shot:
    """One photograph: its study, eye and status; for a done one, its prediction's outcome."""

    study: str
    eye: str | None
    status: str = "done"
    gradable: bool | None = True
    referable: bool | None = False
    referral_probability: float | None = 0.2
    batch: str = "night-1"
    answered: bool = True  # False: the model refused the picture (a black frame)


def add_shots(sessions: sessionmaker[Session], shots: list[Shot]) -> dict[str, int]:
    """Write the shots (one model version, v1); returns the study ids by key."""
    with sessions.begin() as session:
        version = ModelVersion(name="v1", path="/ckpt/v1", manifest_sha256="1" * 64)
        batches: dict[str, Batch] = {}
        studies: dict[str, Study] = {}
        for number, shot in enumerate(shots):
            batch = batches.setdefault(shot.batch, Batch(name=shot.batch, source="/inbox"))
            study = studies.setdefault(
                shot.study, Study(study_key=shot.study, patient_pseudonym=f"p-{shot.study}")
            )
            image = Image(
                batch=batch,
                study=study,
                patient_pseudonym=study.patient_pseudonym,
                sha256=hashlib.sha256(str(number).encode()).hexdigest(),
                source_path=f"/inbox/{number}.jpg",
                laterality=shot.eye,
                status=ImageStatus(shot.status),
            )
            if shot.status == "done":
                ungradable = shot.gradable is False
                answer = {
                    "label": "inherited",
                    "probability": 0.7,
                    "probabilities": {"inherited": 0.7, "acquired": 0.3},
                    "generated_text": "The disease is inherited.",
                    "text_label": "inherited",
                    "text_agrees": True,
                }
                image.predictions = [
                    Prediction(
                        model_version=version,
                        **(answer if shot.answered else {}),
                        gradable=shot.gradable,
                        quality_score=0.2 if ungradable else 0.8,
                        quality_reason="too_dark,out_of_focus" if ungradable else None,
                        referable=None if ungradable else shot.referable,
                        referral_probability=shot.referral_probability,
                    )
                ]
            elif shot.status in ("failed", "rejected"):
                image.reason_code, image.reason = "decode_error", "cannot be decoded"
            session.add(image)
        session.flush()
        return {key: study.id for key, study in studies.items()}


SHOTS = [
    Shot("both-fine", "R"),
    Shot("both-fine", "L", referral_probability=0.3),
    Shot("right-referable", "R", referable=True, referral_probability=0.8),
    Shot("right-referable", "R", referral_probability=0.1),
    Shot("right-referable", "L"),
    Shot("left-ungradable", "R"),
    Shot("left-ungradable", "L", gradable=False),
    Shot("left-ungradable", "L", status="failed"),
    # one gradable image is enough: the failed one does not make the eye ungradable
    Shot("one-good-image", "R"),
    Shot("one-good-image", "L", status="failed"),
    Shot("one-good-image", "L", referral_probability=0.4),
    Shot("right-black", "R", gradable=False, answered=False, referral_probability=None),
    Shot("right-black", "L"),
    Shot("left-missing", "R"),
    Shot("right-rejected-left-missing", "R", status="rejected"),
    Shot("pending", "R", referable=True),
    Shot("pending", "L", status="queued"),
    Shot("pending-unlateralised", "R"),
    Shot("pending-unlateralised", "L"),
    Shot("pending-unlateralised", None, status="processing"),
    # an image without laterality fills no eye, but its finding refers
    Shot("unlateralised-referable", "R"),
    Shot("unlateralised-referable", "L"),
    Shot("unlateralised-referable", None, referable=True, referral_probability=0.9),
    Shot("unlateralised-only", None),
    # a prediction from before gradability was assessed counts as gradable, not referable
    Shot("not-assessed", "R", gradable=None, referable=None, referral_probability=None),
    Shot("not-assessed", "L", gradable=None, referable=None, referral_probability=None),
    # a study delivered over two nights is decided per night
    Shot("two-nights", "R"),
    Shot("two-nights", "L", batch="night-2"),
]

OUTCOMES = sa.text(
    "SELECT patient_pseudonym, study, batch, decision, reason, right_eye, "
    "right_referral_probability, left_eye, left_referral_probability, images, model_version "
    "FROM screening_outcomes"
)


def _outcomes(url: str, ids: dict[str, int]) -> dict[tuple[str, str], tuple]:
    """The view's rows by (study key, batch), the key found from the study id."""
    keys = {study_id: key for key, study_id in ids.items()}
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(OUTCOMES).all()
    engine.dispose()
    outcomes = {}
    for row in rows:
        key = keys[row.study]
        assert row.patient_pseudonym == f"p-{key}" and row.model_version in ("v1", None)
        outcomes[key, row.batch] = tuple(row[3:10])
    assert len(outcomes) == len(rows)
    return outcomes


def test_each_study_is_decided_with_its_reason(database_url: str) -> None:
    ids = add_shots(session_factory(database_url), SHOTS)
    n1, n2 = "night-1", "night-2"
    assert _outcomes(database_url, ids) == {
        ("both-fine", n1): ("no_refer", "no referable finding in either eye",
                            "not_referable", 0.2, "not_referable", 0.3, 2),
        ("right-referable", n1): ("refer", "right eye referable",
                                  "referable", 0.8, "not_referable", 0.2, 3),
        ("left-ungradable", n1): ("refer", "left eye ungradable",
                                  "not_referable", 0.2, "ungradable", None, 3),
        ("one-good-image", n1): ("no_refer", "no referable finding in either eye",
                                 "not_referable", 0.2, "not_referable", 0.4, 3),
        ("right-black", n1): ("refer", "right eye ungradable",
                              "ungradable", None, "not_referable", 0.2, 2),
        ("left-missing", n1): ("refer", "left eye missing",
                               "not_referable", 0.2, "missing", None, 1),
        ("right-rejected-left-missing", n1): ("refer", "right eye ungradable, left eye missing",
                                              "ungradable", None, "missing", None, 1),
        ("pending", n1): ("pending", "images not finished: 1",
                          "referable", 0.2, "pending", None, 2),
        ("pending-unlateralised", n1): ("pending", "images not finished: 1",
                                        "not_referable", 0.2, "not_referable", 0.2, 3),
        ("unlateralised-referable", n1): ("refer", "image without laterality referable",
                                          "not_referable", 0.2, "not_referable", 0.2, 3),
        ("unlateralised-only", n1): ("refer", "right eye missing, left eye missing",
                                     "missing", None, "missing", None, 1),
        ("not-assessed", n1): ("no_refer", "no referable finding in either eye",
                               "not_referable", None, "not_referable", None, 2),
        ("two-nights", n1): ("refer", "left eye missing",
                             "not_referable", 0.2, "missing", None, 1),
        ("two-nights", n2): ("refer", "right eye missing",
                             "missing", None, "not_referable", 0.2, 1),
    }  # fmt: skip


def test_the_decision_follows_the_prediction_each_image_shows(database_url: str) -> None:
    """A promoted version that finds the right eye referable refers the study it had not."""
    sessions = session_factory(database_url)
    add_shots(sessions, [Shot("s", "R"), Shot("s", "L")])
    with sessions.begin() as session:
        v2 = ModelVersion(name="v2", path="/ckpt/v2", manifest_sha256="2" * 64, is_promoted=True)
        right = session.scalars(sa.select(Image).where(Image.laterality == "R")).one()
        session.add(
            Prediction(
                image=right,
                model_version=v2,
                label="inherited",
                probability=0.9,
                probabilities={"inherited": 0.9, "acquired": 0.1},
                text_agrees=True,
                gradable=True,
                referable=True,
                referral_probability=0.9,
            )
        )
    engine = make_engine(database_url)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT decision, reason, right_eye, model_version FROM screening_outcomes")
        ).one()
    engine.dispose()
    assert tuple(row) in {
        ("refer", "right eye referable", "referable", versions) for versions in ("v1,v2", "v2,v1")
    }


def test_study_results_shows_no_label_for_an_ungradable_image(database_url: str) -> None:
    sessions = session_factory(database_url)
    shots = [Shot("s", "R", gradable=False), Shot("s", "L"), Shot("s", None, gradable=False)]
    add_shots(sessions, [*shots[:2], replace(shots[2], answered=False)])
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT laterality, gradable, quality_score, quality_reason, label, probability, "
                "generated_text, text_agrees, referable, model_version FROM study_results "
                "ORDER BY image_id"
            )
        ).all()
        stored = connection.scalars(sa.text("SELECT label FROM predictions ORDER BY id")).all()
    engine.dispose()
    dark = ("too_dark,out_of_focus", None, None, None, None, None, "v1")
    assert [tuple(row) for row in rows] == [
        ("R", False, 0.2, *dark),
        ("L", True, 0.8, None, "inherited", 0.7, "The disease is inherited.", True, False, "v1"),
        (None, False, 0.2, *dark),  # the model refused it: no answer at all
    ]
    assert stored == ["inherited", "inherited", None]  # the model's answer kept, not shown


def test_a_downgrade_drops_the_predictions_without_an_answer(database_url: str) -> None:
    """0004 needs a label in every prediction; an upgrade brings the views back."""
    add_shots(session_factory(database_url), [Shot("s", "R"), Shot("s", "L", answered=False)])
    config = alembic_config(database_url)
    command.downgrade(config, "0004")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalars(sa.text("SELECT label FROM predictions")).all() == ["inherited"]
    command.upgrade(config, "head")
    with engine.connect() as connection:
        decision = connection.scalar(sa.text("SELECT decision FROM screening_outcomes"))
    engine.dispose()
    assert decision == "refer"  # the left eye's image is done, with no prediction: not assessed
