"""The analysts' views on both engines: study_rollup over a constructed night, the
prediction each image shows, no identifying column, migrations (screening_outcomes'
decisions: test_screening_outcomes)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from analyst_rows import NIGHT_1, NIGHT_2, add_nights

from db.identifying import ANALYST_VIEWS, IDENTIFYING_NAMES
from db.models import ModelVersion, Prediction
from db.session import alembic_config, make_engine, session_factory
from mdf.analysis.export import as_utc

ROLLUP = sa.text(
    "SELECT batch, study_id, patient_pseudonym, images, done, failed, right_label, "
    "right_probability, left_label, left_probability, study_label, study_probability, "
    "study_eye, distinct_labels, model_versions, last_predicted_at "
    "FROM study_rollup ORDER BY batch, study_id"
).columns(last_predicted_at=sa.DateTime(timezone=True))


def _query(url: str, query: sa.TextClause | str) -> list[sa.Row]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(query) if isinstance(query, str) else query).all()
    engine.dispose()
    return rows


def _rollup(url: str) -> list[tuple]:
    """Rows of study_rollup with the study named by its key (read from the table here)."""
    keys = dict(_query(url, "SELECT id, study_key FROM studies"))
    # group_concat's order is SQLite's to choose: compare the set of versions
    return [
        (r[0], keys[r[1]], *r[2:-2], set(r[-2].split(",")), as_utc(r[-1]))
        for r in _query(url, ROLLUP)
    ]


def test_study_rollup_has_one_row_per_study_and_batch(database_url: str, tmp_path: Path) -> None:
    add_nights(session_factory(database_url), tmp_path)
    s1, s2, s3 = "s1" * 16, "s2" * 16, "s3" * 16
    assert _rollup(database_url) == [
        # the most confident right eye (0.95 of two), the failed left image counted
        ("night-1", "S1", s1, 4, 3, 1, "acquired", 0.95, "inherited", 0.6,
         "acquired", 0.95, "R", 2, {"v2"}, NIGHT_1 + timedelta(minutes=32)),
        # a queued image without laterality counts, but gives no eye
        ("night-1", "S2", s2, 2, 1, 0, None, None, "inherited", 0.55,
         "inherited", 0.55, "L", 1, {"v1"}, NIGHT_1 + timedelta(minutes=2)),
        # the same study delivered again the next night is a row of that night
        ("night-2", "S1", s1, 1, 1, 0, "inherited", 0.99, None, None,
         "inherited", 0.99, "R", 1, {"v2"}, NIGHT_2 + timedelta(minutes=3)),
        ("night-2", "S3", s3, 2, 2, 0, "acquired", 0.9, "acquired", 0.85,
         "acquired", 0.9, "R", 1, {"v1", "v2"}, NIGHT_2 + timedelta(minutes=2)),
    ]  # fmt: skip


def test_study_results_carries_the_study_id(database_url: str, tmp_path: Path) -> None:
    ids = add_nights(session_factory(database_url), tmp_path)
    rows = dict(_query(database_url, "SELECT image_id, study_id FROM study_results"))
    studies = dict(_query(database_url, "SELECT study_key, id FROM studies"))
    assert rows[ids["s1_r1"]] == rows[ids["s1_r3"]] == studies["S1"]
    assert rows[ids["s3_l1"]] == studies["S3"]
    assert rows[ids["rejected"]] is None


def _columns(url: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        present = set(inspector.get_view_names())  # an older revision has fewer
        views = {
            v: [c["name"] for c in inspector.get_columns(v)] for v in ANALYST_VIEWS if v in present
        }
    engine.dispose()
    return views


def test_views_carry_no_identifying_column(database_url: str, tmp_path: Path) -> None:
    """Neither a column of ``db.identifying`` nor the study key under another name:
    screening_outcomes' ``study`` is the study's id."""
    for view, columns in _columns(database_url).items():
        assert not set(columns) & IDENTIFYING_NAMES, view
        assert ("study" in columns) == (view == "screening_outcomes"), view
        assert ("study_id" in columns) == (view != "screening_outcomes"), view
    add_nights(session_factory(database_url), tmp_path)
    studies = {row.study for row in _query(database_url, "SELECT study FROM screening_outcomes")}
    assert studies == {row.id for row in _query(database_url, "SELECT id FROM studies")}


SHOWN = sa.text(
    "SELECT image_id, model_version, label, probability FROM study_results "
    "WHERE label IS NOT NULL ORDER BY image_id"
)


def test_each_image_shows_the_promoted_versions_answer(database_url: str, tmp_path: Path) -> None:
    """s1_r1 was classified by v1 (acquired 0.7), then v2 (inherited 0.8); the rollup of
    its study follows the prediction each image shows."""
    sessions = session_factory(database_url)
    ids = add_nights(sessions, tmp_path)
    latest = {row.image_id: tuple(row[1:]) for row in _query(database_url, SHOWN)}
    assert latest[ids["s1_r1"]] == ("v2", "inherited", 0.8)  # nothing promoted: the latest

    with sessions.begin() as session:
        # A third version's answer written with an older time (a late result of a slow
        # worker) is not the latest, though its row is the newest.
        v3 = ModelVersion(name="v3", path="/ckpt/v3", manifest_sha256="3" * 64)
        session.add(
            Prediction(
                image_id=ids["s1_r1"],
                model_version=v3,
                label="acquired",
                probability=0.51,
                probabilities={},
                text_agrees=True,
                created_at=NIGHT_1 + timedelta(minutes=5),
            )
        )
    assert {r.image_id: tuple(r[1:]) for r in _query(database_url, SHOWN)} == latest

    with sessions.begin() as session:
        session.execute(
            sa.update(ModelVersion).where(ModelVersion.name == "v1").values(is_promoted=True)
        )
    shown = {row.image_id: tuple(row[1:]) for row in _query(database_url, SHOWN)}
    assert shown[ids["s1_r1"]] == ("v1", "acquired", 0.7)  # promoted, though older
    assert shown[ids["s3_r1"]] == ("v1", "acquired", 0.9)
    assert shown[ids["s3_l1"]] == ("v2", "acquired", 0.85)  # v1 never saw it: the latest
    assert {i: shown[i] for i in shown if i != ids["s1_r1"]} == {
        i: latest[i] for i in latest if i != ids["s1_r1"]
    }
    night_1_s1 = _rollup(database_url)[0]
    assert night_1_s1[:2] == ("night-1", "S1")
    # right eye: s1_r2 acquired 0.95 still the most confident; v1 now among the versions
    assert night_1_s1[6:8] == ("acquired", 0.95) and night_1_s1[-2] == {"v1", "v2"}


def test_migrations_downgrade_and_upgrade(database_url: str, tmp_path: Path) -> None:
    add_nights(session_factory(database_url), tmp_path)
    config = alembic_config(database_url)
    command.downgrade(config, "0003")
    old = _columns(database_url)
    assert {"study", "source_path"} <= set(old["study_results"])
    assert "study" in old["study_rollup"]
    assert len(_query(database_url, "SELECT * FROM study_rollup")) == 4
    command.downgrade(config, "0001")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert sa.inspect(connection).get_view_names() == ["study_results"]
        columns = connection.execute(sa.text("SELECT * FROM study_results")).keys()
        assert "study_id" not in columns and "study" in columns
    engine.dispose()
    command.upgrade(config, "head")
    assert len(_rollup(database_url)) == 4
    assert "source_path" not in _columns(database_url)["study_results"]
    command.downgrade(config, "0004")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert sorted(sa.inspect(connection).get_view_names()) == ["study_results", "study_rollup"]
        columns = connection.execute(sa.text("SELECT * FROM study_results")).keys()
        assert "gradable" not in columns and "label" in columns
        predictions = sa.inspect(connection).get_columns("predictions")
        assert "gradable" not in {column["name"] for column in predictions}
    engine.dispose()
    assert len(_rollup(database_url)) == 4
    command.upgrade(config, "head")
    assert len(_query(database_url, "SELECT * FROM screening_outcomes")) == 4


def test_postgresql_documents_the_views(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("COMMENT ON is PostgreSQL's")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        comments = dict(
            connection.execute(
                sa.text(
                    "SELECT c.relname || '.' || a.attname, col_description(c.oid, a.attnum) "
                    "FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid "
                    "WHERE c.relname IN ('study_results', 'study_rollup', 'screening_outcomes') "
                    "AND a.attnum > 0"
                )
            ).all()
        )
        view = connection.scalar(sa.text("SELECT obj_description('study_rollup'::regclass)"))
        results = connection.scalar(sa.text("SELECT obj_description('study_results'::regclass)"))
        outcomes = connection.scalar(
            sa.text("SELECT obj_description('screening_outcomes'::regclass)")
        )
    engine.dispose()
    assert all(comments.values()), [name for name, text in comments.items() if not text]
    assert len(comments) == 24 + 16 + 11
    assert "the promoted model version's prediction" in results  # quote escaped
    assert "NULL for an ungradable image" in results
    assert "promoted one" in comments["study_results.model_version"]
    assert "NULL when the image is ungradable" in comments["study_results.label"]
    assert view.startswith("One row per study and batch")
    assert outcomes.startswith("One row per patient, study and batch")
    assert "not its key" in comments["screening_outcomes.study"]
