"""Initial schema, and the study_results view for analysts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 07:49:17.503913
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STUDY_RESULTS = """
CREATE VIEW study_results AS
SELECT
    i.id AS image_id,
    b.name AS batch,
    s.study_key AS study,
    i.patient_pseudonym,
    i.source_path,
    i.frame,
    i.laterality,
    i.status,
    i.reason_code,
    i.reason,
    p.label,
    p.probability,
    p.generated_text,
    p.text_agrees,
    mv.name AS model_version,
    i.registered_at,
    i.queued_at,
    i.started_at,
    i.finished_at,
    p.created_at AS predicted_at
FROM images AS i
JOIN batches AS b ON b.id = i.batch_id
LEFT JOIN studies AS s ON s.id = i.study_id
LEFT JOIN predictions AS p
    ON p.id = (SELECT max(p2.id) FROM predictions AS p2 WHERE p2.image_id = i.id)
LEFT JOIN model_versions AS mv ON mv.id = p.model_version_id
"""


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("files_seen", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("preset", sa.String(length=64), nullable=True),
        sa.Column(
            "labels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_promoted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("manifest_sha256"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(
        "uq_model_versions_promoted",
        "model_versions",
        ["is_promoted"],
        unique=True,
        sqlite_where=sa.text("is_promoted"),
        postgresql_where=sa.text("is_promoted"),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_key", sa.String(length=200), nullable=False),
        sa.Column("patient_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_key"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_studies_patient_pseudonym"), ["patient_pseudonym"], unique=False
        )

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("file_kind", sa.String(length=16), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_uid", sa.String(length=64), nullable=True),
        sa.Column("laterality", sa.String(length=1), nullable=True),
        sa.Column("patient_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("clinical_text", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("mask_path", sa.Text(), nullable=True),
        sa.Column("data_source", sa.String(length=100), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "registered",
                "queued",
                "processing",
                "done",
                "rejected",
                "failed",
                name="image_status",
            ),
            nullable=False,
        ),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "frame", name="uq_images_content"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_images_patient_pseudonym"), ["patient_pseudonym"], unique=False
        )
        batch_op.create_index(
            "ix_images_status_changed", ["status", "status_changed_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_images_study_id"), ["study_id"], unique=False)

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("challenger_version_id", sa.Integer(), nullable=True),
        sa.Column("champion_version_id", sa.Integer(), nullable=True),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["challenger_version_id"],
            ["model_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["champion_version_id"],
            ["model_versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "image_paths",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "path", name="uq_image_paths"),
    )
    with op.batch_alter_table("image_paths", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_paths_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_paths_path"), ["path"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("probability", sa.Double(), nullable=False),
        sa.Column(
            "probabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("generated_text", sa.Text(), nullable=True),
        sa.Column("text_label", sa.String(length=64), nullable=True),
        sa.Column("text_agrees", sa.Boolean(), nullable=False),
        sa.Column("mask_path", sa.Text(), nullable=True),
        sa.Column("preprocess_ms", sa.Double(), nullable=True),
        sa.Column("inference_ms", sa.Double(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "model_version_id", name="uq_predictions_image_version"),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_image_id"), ["image_id"], unique=False)

    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["previous_version_id"],
            ["model_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["training_run_id"],
            ["training_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(STUDY_RESULTS)


def downgrade() -> None:
    op.execute("DROP VIEW study_results")
    op.drop_table("promotions")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_image_id"))

    op.drop_table("predictions")
    with op.batch_alter_table("image_paths", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_paths_path"))
        batch_op.drop_index(batch_op.f("ix_image_paths_image_id"))

    op.drop_table("image_paths")
    op.drop_table("training_runs")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_study_id"))
        batch_op.drop_index("ix_images_status_changed")
        batch_op.drop_index(batch_op.f("ix_images_patient_pseudonym"))
        batch_op.drop_index(batch_op.f("ix_images_batch_id"))

    op.drop_table("images")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_patient_pseudonym"))

    op.drop_table("studies")
    op.drop_index("uq_model_versions_promoted", table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_table("batches")
    sa.Enum(name="image_status").drop(op.get_bind(), checkfirst=True)
