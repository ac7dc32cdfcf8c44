"""deliveries: each result object (SR, SEG) sent back to each destination, attempt by attempt.

A study that came as DICOM gets a Structured Report and, per source instance, a
Segmentation (``delivery/``). Each object goes to every configured destination, and a
row per (object, destination) records where it stands (``pending``, ``sent``, ``failed``),
how many attempts it took, why the last failed attempt failed, and the lease of the
sender holding it. Object UIDs are derived from the study, the model version and the
kind, so the unique (sop_instance_uid, destination) keeps one row however often a
study is delivered.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=300), nullable=False),
        sa.Column(
            "status", sa.Enum("pending", "sent", "failed", name="delivery_status"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid", "destination", name="uq_deliveries_object"),
    )
    op.create_index("ix_deliveries_study_id", "deliveries", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_study_id", table_name="deliveries")
    op.drop_table("deliveries")
    sa.Enum(name="delivery_status").drop(op.get_bind(), checkfirst=True)
