"""The analysts' views leave identifying columns out and show the promoted version's answer.

study_results loses ``source_path`` and ``study`` (the study key), study_rollup loses
``study``: file and folder names, and the study ids some sites build, carry a
patient's name or ID (``db.identifying`` lists what is identifying); ``study_id``
groups a study's images instead.

Which prediction an image shows, when several model versions classified it: the
promoted version's, where the image has one; else the latest written (the most
recent ``predictions.created_at``, the higher id on a tie). Before, the view showed
the last one written, so classifying a batch again with an older version changed
the analysts' answer. On PostgreSQL, ``mdf db upgrade`` lets the analyst role read
these two views and nothing else (``db.cli``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence
from types import ModuleType

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STUDY_RESULTS = """
CREATE VIEW study_results AS
SELECT
    i.id AS image_id,
    b.name AS batch,
    i.study_id,
    i.patient_pseudonym,
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
LEFT JOIN predictions AS p ON p.id = (
    SELECT p2.id
    FROM predictions AS p2
    JOIN model_versions AS mv2 ON mv2.id = p2.model_version_id
    WHERE p2.image_id = i.id
    ORDER BY CASE WHEN mv2.is_promoted THEN 0 ELSE 1 END, p2.created_at DESC, p2.id DESC
    LIMIT 1
)
LEFT JOIN model_versions AS mv ON mv.id = p.model_version_id
"""

# 0002's rollup, without the study key.
STUDY_ROLLUP_DROPPED = "    max(study) AS study,\n"

#: Columns 0002 documented that these views no longer have.
REMOVED = {"study_results": ("study", "source_path"), "study_rollup": ("study",)}

RULE = (
    "the promoted model version's prediction where the image has one, else the latest "
    "written (predicted_at, then the higher prediction id)"
)
DESCRIPTIONS = {
    "study_results": (
        f"One row per image (a file, or a frame of a multi-frame DICOM) with {RULE}; "
        "no file names or study keys, which can identify a patient",
        {
            "label": "predicted label of the image's shown prediction (see the view)",
            "model_version": "model version of the shown prediction: the promoted one when "
            "it classified the image",
            "predicted_at": "when the shown prediction was written",
        },
    ),
    "study_rollup": (
        "One row per study and batch: both eyes, the study's label and image counts, "
        "over each image's shown prediction (study_results)",
        {"model_versions": "comma-separated model versions of the shown predictions"},
    ),
}


def _previous() -> ModuleType:
    """Revision 0002, whose views and comments this one revises."""
    return op.get_context().script.get_revision("0002").module


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    previous = _previous()
    op.execute("DROP VIEW study_rollup")
    op.execute("DROP VIEW study_results")
    op.execute(STUDY_RESULTS)
    rollup = previous.STUDY_ROLLUP.replace(STUDY_ROLLUP_DROPPED, "")
    op.execute(rollup.format(model_versions=previous.MODEL_VERSIONS[dialect]))
    if dialect == "postgresql":
        for view, (summary, columns) in _comments(previous).items():
            op.execute(f"COMMENT ON VIEW {view} IS {_literal(summary)}")
            for column, description in columns.items():
                op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_literal(description)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    previous = _previous()
    op.execute("DROP VIEW study_rollup")
    op.execute("DROP VIEW study_results")
    op.execute(previous.STUDY_RESULTS)
    op.execute(previous.STUDY_ROLLUP.format(model_versions=previous.MODEL_VERSIONS[dialect]))
    if dialect == "postgresql":
        previous._comment(documented=True)


def _comments(previous: ModuleType) -> dict[str, tuple[str, dict[str, str]]]:
    """0002's column descriptions, less the removed columns, with this revision's changes."""
    comments = {}
    for view, (_, old_columns) in previous.COMMENTS.items():
        summary, changed = DESCRIPTIONS[view]
        columns = {c: text for c, text in old_columns.items() if c not in REMOVED[view]}
        comments[view] = (summary, columns | changed)
    return comments


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
