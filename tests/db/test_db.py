"""The schema: migrations match the models, the guard, constraints and the analysts' view."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from db.cli import upgrade
from db.models import Base, Batch, Image, ImageStatus, ModelVersion, Prediction, Study
from db.session import DatabaseNotMigrated, check_migrated, make_engine, session_factory


def test_migrations_match_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_unmigrated_database_is_refused(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with pytest.raises(DatabaseNotMigrated, match="mdf db upgrade"):
        check_migrated(make_engine(url))
    upgrade(url)
    check_migrated(make_engine(url))


def _image(batch: Batch, sha: str, **values) -> Image:
    return Image(batch=batch, sha256=sha, source_path=f"/in/{sha}.jpg", **values)


def test_one_prediction_per_image_and_version(database_url: str) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        batch = Batch(name="night", source="/in")
        image = _image(batch, "a" * 64)
        version = ModelVersion(name="v1", path="/ckpt", manifest_sha256="f" * 64, labels=["x"])
        session.add_all([image, version])
        session.flush()
        ids = image.id, version.id
    row = {"label": "x", "probability": 0.9, "probabilities": {"x": 0.9}, "text_agrees": True}
    with sessions.begin() as session:
        session.add(Prediction(image_id=ids[0], model_version_id=ids[1], **row))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(Prediction(image_id=ids[0], model_version_id=ids[1], **row))


def test_same_content_and_frame_is_one_image(database_url: str) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        batch = Batch(name="night", source="/in")
        session.add_all([_image(batch, "b" * 64), _image(batch, "b" * 64, frame=1)])
    with pytest.raises(IntegrityError), sessions.begin() as session:
        batch = session.scalar(sa.select(Batch))
        session.add(_image(batch, "b" * 64))


def test_study_results_view_shows_latest_prediction(database_url: str) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        batch = Batch(name="night-1", source="/in")
        study = Study(study_key="1.2.3", patient_pseudonym="p" * 64)
        done = _image(batch, "c" * 64, study=study, laterality="L", status=ImageStatus.DONE)
        rejected = _image(
            batch,
            "d" * 64,
            status=ImageStatus.REJECTED,
            reason_code="truncated",
            reason="cut short",
        )
        old = ModelVersion(name="v1", path="/a", manifest_sha256="1" * 64, labels=[])
        new = ModelVersion(name="v2", path="/b", manifest_sha256="2" * 64, labels=[])
        session.add_all([done, rejected, old, new])
        session.flush()
        study_id = study.id
        for version, label in ((old, "acquired"), (new, "inherited")):
            session.add(
                Prediction(
                    image_id=done.id,
                    model_version_id=version.id,
                    label=label,
                    probability=0.75,
                    probabilities={label: 0.75},
                    generated_text=f"The answer is {label}.",
                    text_agrees=True,
                )
            )
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT batch, study_id, laterality, status, reason, label, probability, "
                "model_version FROM study_results ORDER BY image_id"
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("night-1", study_id, "L", "done", None, "inherited", 0.75, "v2"),
        ("night-1", None, None, "rejected", "cut short", None, None, None),
    ]
