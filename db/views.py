"""The analysts' views as queries see them: each named once, with its columns and types.

The SQL that defines them lives in the migrations (the latest in 0005); these tables
only let SQLAlchemy select from them. The exports, the report, the run-batch summary
and delivery all read the views through these, so a column is added in one place.
"""

from __future__ import annotations

import sqlalchemy as sa

from db.models import ImageStatus

__all__ = ["DECISIONS", "SCREENING_OUTCOMES", "STUDY_RESULTS"]

_WHEN = sa.DateTime(timezone=True)

STUDY_RESULTS = sa.table(
    "study_results",
    sa.column("image_id", sa.Integer()),
    sa.column("batch", sa.String()),
    sa.column("study_id", sa.Integer()),
    sa.column("patient_pseudonym", sa.String()),
    sa.column("frame", sa.Integer()),
    sa.column("laterality", sa.String()),
    # PostgreSQL compares an enum column with an enum value only
    sa.column("status", sa.Enum(*ImageStatus, name="image_status")),
    sa.column("reason_code", sa.String()),
    sa.column("reason", sa.String()),
    sa.column("gradable", sa.Boolean()),
    sa.column("quality_score", sa.Float()),
    sa.column("quality_reason", sa.String()),
    sa.column("label", sa.String()),
    sa.column("probability", sa.Float()),
    sa.column("generated_text", sa.String()),
    sa.column("text_agrees", sa.Boolean()),
    sa.column("referable", sa.Boolean()),
    sa.column("referral_probability", sa.Float()),
    sa.column("model_version", sa.String()),
    sa.column("registered_at", _WHEN),
    sa.column("queued_at", _WHEN),
    sa.column("started_at", _WHEN),
    sa.column("finished_at", _WHEN),
    sa.column("predicted_at", _WHEN),
)

SCREENING_OUTCOMES = sa.table(
    "screening_outcomes",
    sa.column("patient_pseudonym", sa.String()),
    sa.column("study", sa.Integer()),
    sa.column("batch", sa.String()),
    sa.column("decision", sa.String()),
    sa.column("reason", sa.String()),
    sa.column("right_eye", sa.String()),
    sa.column("right_referral_probability", sa.Float()),
    sa.column("left_eye", sa.String()),
    sa.column("left_referral_probability", sa.Float()),
    sa.column("images", sa.Integer()),
    sa.column("model_version", sa.String()),
)

#: The values of screening_outcomes.decision.
DECISIONS = ("refer", "no_refer", "pending")
