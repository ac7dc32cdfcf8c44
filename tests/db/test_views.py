"""The analysts' views on both engines: study_rollup over a constructed night, migrations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from analyst_rows import NIGHT_1, NIGHT_2, add_nights

from db.session import alembic_config, make_engine, session_factory
from mdf.analysis.export import as_utc

ROLLUP = sa.text(
    "SELECT batch, study, patient_pseudonym, images, done, failed, right_label, "
    "right_probability, left_label, left_probability, study_label, study_probability, "
    "study_eye, distinct_labels, model_versions, last_predicted_at "
    "FROM study_rollup ORDER BY batch, study"
).columns(last_predicted_at=sa.DateTime(timezone=True))


def _rollup(url: str) -> list[tuple]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(ROLLUP).all()
    engine.dispose()
    # group_concat's order is SQLite's to choose: compare the set of versions
    return [(*r[:-2], set(r[-2].split(",")), as_utc(r[-1])) for r in rows]


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
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = dict(
            connection.execute(sa.text("SELECT image_id, study_id FROM study_results")).all()
        )
        studies = dict(connection.execute(sa.text("SELECT study_key, id FROM studies")).all())
    engine.dispose()
    assert rows[ids["s1_r1"]] == rows[ids["s1_r3"]] == studies["S1"]
    assert rows[ids["s3_l1"]] == studies["S3"]
    assert rows[ids["rejected"]] is None


def test_second_migration_downgrades_and_upgrades(database_url: str, tmp_path: Path) -> None:
    add_nights(session_factory(database_url), tmp_path)
    config = alembic_config(database_url)
    engine = make_engine(database_url)
    command.downgrade(config, "0001")
    with engine.connect() as connection:
        assert sa.inspect(connection).get_view_names() == ["study_results"]
        columns = connection.execute(sa.text("SELECT * FROM study_results")).keys()
        assert "study_id" not in columns and "study" in columns
    command.upgrade(config, "head")
    assert len(_rollup(database_url)) == 4
    engine.dispose()


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
                    "WHERE c.relname IN ('study_results', 'study_rollup') AND a.attnum > 0"
                )
            ).all()
        )
        view = connection.scalar(sa.text("SELECT obj_description('study_rollup'::regclass)"))
    engine.dispose()
    assert all(comments.values()), [name for name, text in comments.items() if not text]
    assert len(comments) == 22 + 16
    assert "manifest's study_id" in comments["study_results.study"]  # quote escaped
    assert view.startswith("One row per study and batch")
