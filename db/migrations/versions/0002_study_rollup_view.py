"""study_results gains study_id; study_rollup, one row per study and batch; both documented.

``study_id`` lets exports group images by study without the study key, which a
site's manifest may build from the patient ID.

A study's label is that of its most confident prediction: the model's two classes
(acquired, inherited) have no order of severity, so no eye is "worse"; the most
confident call is the one least likely to be wrong. ``distinct_labels`` shows when
the images of a study disagree. On PostgreSQL the descriptions below become
``COMMENT ON`` the views and their columns (``\\d+ study_rollup`` in psql shows them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

# 0001's study_results with images.study_id added.
STUDY_RESULTS = """
CREATE VIEW study_results AS
SELECT
    i.id AS image_id,
    b.name AS batch,
    i.study_id,
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

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Distinct model versions of a study, comma-separated: each engine has its own aggregate.
MODEL_VERSIONS = {
    "postgresql": "string_agg(DISTINCT model_version, ',' ORDER BY model_version)",
    "sqlite": "group_concat(DISTINCT model_version)",
}

STUDY_ROLLUP = """
CREATE VIEW study_rollup AS
WITH ranked AS (
    SELECT
        r.*,
        row_number() OVER (
            PARTITION BY r.batch, r.study_id, r.laterality
            ORDER BY r.probability DESC NULLS LAST, r.image_id
        ) AS eye_rank,
        row_number() OVER (
            PARTITION BY r.batch, r.study_id
            ORDER BY r.probability DESC NULLS LAST, r.image_id
        ) AS study_rank
    FROM study_results AS r
    WHERE r.study_id IS NOT NULL
)
SELECT
    batch,
    study_id,
    max(study) AS study,
    max(patient_pseudonym) AS patient_pseudonym,
    count(*) AS images,
    sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS done,
    sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
    max(CASE WHEN laterality = 'R' AND eye_rank = 1 THEN label END) AS right_label,
    max(CASE WHEN laterality = 'R' AND eye_rank = 1 THEN probability END) AS right_probability,
    max(CASE WHEN laterality = 'L' AND eye_rank = 1 THEN label END) AS left_label,
    max(CASE WHEN laterality = 'L' AND eye_rank = 1 THEN probability END) AS left_probability,
    max(CASE WHEN study_rank = 1 THEN label END) AS study_label,
    max(CASE WHEN study_rank = 1 THEN probability END) AS study_probability,
    max(CASE WHEN study_rank = 1 AND label IS NOT NULL THEN laterality END) AS study_eye,
    count(DISTINCT label) AS distinct_labels,
    {model_versions} AS model_versions,
    max(predicted_at) AS last_predicted_at
FROM ranked
GROUP BY batch, study_id
"""

COMMENTS = {
    "study_results": (
        "One row per image (a file, or a frame of a multi-frame DICOM) with its latest prediction",
        {
            "image_id": "the image's id (images.id)",
            "batch": "name of the delivery that registered the image",
            "study_id": "the study's id (studies.id); NULL when unknown",
            "study": "study key: DICOM StudyInstanceUID or the manifest's study_id; "
            "NULL when unknown (rejected files, rasters without a manifest row)",
            "patient_pseudonym": "keyed HMAC-SHA256 pseudonym of the patient ID",
            "source_path": "path of the file when it was first registered; file names may "
            "carry patient identity, so exports leave it out",
            "frame": "frame number within the file (0 for single-image files)",
            "laterality": "R or L (DICOM ImageLaterality or the manifest); NULL when unknown",
            "status": "registered, queued, processing, done, rejected or failed",
            "reason_code": "stable code of a rejection or failure",
            "reason": "human-readable reason of a rejection or failure",
            "label": "predicted label of the latest prediction",
            "probability": "probability of that label (0 to 1)",
            "generated_text": "the model's generated answer",
            "text_agrees": "whether the generated text names the same label as the scores",
            "model_version": "name of the model version that made the latest prediction",
            "registered_at": "when intake registered the image (UTC)",
            "queued_at": "when it was last sent to the workers",
            "started_at": "when a worker last claimed it",
            "finished_at": "when it was done, rejected or failed",
            "predicted_at": "when the latest prediction was written",
        },
    ),
    "study_rollup": (
        "One row per study and batch: both eyes, the study's label and image counts",
        {
            "batch": "name of the delivery",
            "study_id": "the study's id (studies.id); images without a study (every file "
            "rejected at intake, whose study is unknown) are only in study_results",
            "study": "study key: DICOM StudyInstanceUID or the manifest's study_id",
            "patient_pseudonym": "keyed pseudonym of the patient",
            "images": "images of the study in this batch; those neither done nor failed are "
            "still on their way",
            "done": "images classified",
            "failed": "images the workers failed on",
            "right_label": "label of the most confident right-eye image",
            "right_probability": "its probability",
            "left_label": "label of the most confident left-eye image",
            "left_probability": "its probability",
            "study_label": "label of the most confident image of the study",
            "study_probability": "its probability",
            "study_eye": "laterality of that image (R, L or NULL)",
            "distinct_labels": "number of different labels predicted; above 1: images disagree",
            "model_versions": "comma-separated model versions of the latest predictions",
            "last_predicted_at": "when the study's latest prediction was written",
        },
    ),
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW study_results")
    op.execute(STUDY_RESULTS)
    op.execute(STUDY_ROLLUP.format(model_versions=MODEL_VERSIONS[dialect]))
    if dialect == "postgresql":
        _comment(documented=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _comment(documented=False)
    op.execute("DROP VIEW study_rollup")
    op.execute("DROP VIEW study_results")
    # 0001's definition, read from that revision rather than copied here.
    op.execute(op.get_context().script.get_revision("0001").module.STUDY_RESULTS)


def _comment(*, documented: bool) -> None:
    """Set (or clear) the PostgreSQL comments of both views and their columns."""
    for view, (summary, columns) in COMMENTS.items():
        op.execute(f"COMMENT ON VIEW {view} IS {_literal(summary, documented)}")
        for column, description in columns.items():
            op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_literal(description, documented)}")


def _literal(text: str, documented: bool) -> str:
    return "'" + text.replace("'", "''") + "'" if documented else "NULL"
