"""images gain a claim token and a lease: a worker's claim expires unless it renews it.

``claim_token`` names the claim a worker holds on a ``processing`` image (its Celery
task id, or a random one); only that claim may finish the image. ``lease_expires_at``
is when the claim lapses unless renewed: the scheduler then re-sends the image and
another worker may take it over.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("images", sa.Column("claim_token", sa.String(length=64), nullable=True))
    op.add_column(
        "images", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("images", "lease_expires_at")
    op.drop_column("images", "claim_token")
