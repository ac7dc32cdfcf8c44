"""Screening outcomes: gradability and referral per prediction, a decision per patient and study.

A screening program acts on a decision per patient and visit, not on an image label,
and first decides whether a photograph can be graded at all. So predictions gain the
quality assessment of the image (``gradable``, ``quality_score``, ``quality_reason``)
and the referral call (``referable``, ``referral_probability``); model versions gain
``referral``, the per-label thresholds training chose and what they reached on the
validation patients. The model's answer (``label``, ``probability``, ``probabilities``,
``text_agrees``) may be NULL: an ungradable image the model refuses (a black frame) is
still done, with its assessment and timings.

study_results shows the quality columns, and no label, probability or text for an
ungradable image: the model may still run on it for research, its label is not a
result. Predictions written before this revision were not assessed (``gradable`` NULL)
and keep showing their label.

The new view ``screening_outcomes`` decides each study of each batch over the
predictions study_results shows:

- an image is *pending* until it is done, rejected or failed; *ungradable* when it was
  rejected, failed (a technical failure is a referral, as the English screening
  programme counts it), assessed ungradable or is done without a prediction; otherwise
  *referable* or not (a prediction made before this revision: not referable);
- an eye is ``pending`` while any of its images is, ``referable`` when any of its
  gradable images is, ``missing`` without an image, ``ungradable`` when none of its
  images is gradable, else ``not_referable``;
- a study is ``pending`` while any of its images is, ``refer`` when an eye is
  referable, ungradable or missing, or an image without laterality is referable,
  else ``no_refer``. Both eyes are expected: a view cannot read the settings, so a
  program photographing one eye per visit would see every visit referred.

An image without laterality stands for neither eye (it cannot fill a missing eye), but
a referable finding on it still refers the patient.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12 10:00:00.000000
"""

from collections.abc import Sequence
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREDICTION_COLUMNS = {
    "gradable": sa.Boolean(),
    "quality_score": sa.Double(),
    "quality_reason": sa.Text(),
    "referable": sa.Boolean(),
    "referral_probability": sa.Double(),
}

#: The model's answer, NULL for an ungradable image the model cannot take (a black frame).
MODEL_ANSWER = {
    "label": sa.String(length=64),
    "probability": sa.Double(),
    "probabilities": sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
    "text_agrees": sa.Boolean(),
}

#: What an ungradable image shows instead of its prediction's value.
_RESULT = "CASE WHEN p.gradable IS NOT FALSE THEN p.{0} END AS {0}"

STUDY_RESULTS = f"""
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
    p.gradable,
    p.quality_score,
    p.quality_reason,
    {_RESULT.format("label")},
    {_RESULT.format("probability")},
    {_RESULT.format("generated_text")},
    {_RESULT.format("text_agrees")},
    p.referable,
    p.referral_probability,
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

EYES = {"right": "R", "left": "L"}


def _eye_counts(eye: str, side: str) -> str:
    """An eye's image counts by outcome, and its gradable images' highest referral probability."""
    where = f"laterality = '{side}'"
    return f"""
        sum(CASE WHEN {where} THEN 1 ELSE 0 END) AS {eye}_images,
        sum(CASE WHEN {where} AND outcome = 'pending' THEN 1 ELSE 0 END) AS {eye}_pending,
        sum(CASE WHEN {where} AND outcome = 'referable' THEN 1 ELSE 0 END) AS {eye}_referable,
        sum(CASE WHEN {where} AND outcome <> 'ungradable' THEN 1 ELSE 0 END) AS {eye}_gradable,
        max(CASE WHEN {where} AND outcome IN ('referable', 'not_referable')
            THEN referral_probability END) AS {eye}_referral_probability,"""


def _eye_state(eye: str) -> str:
    return f"""
        CASE
            WHEN {eye}_pending > 0 THEN 'pending'
            WHEN {eye}_referable > 0 THEN 'referable'
            WHEN {eye}_images = 0 THEN 'missing'
            WHEN {eye}_gradable = 0 THEN 'ungradable'
            ELSE 'not_referable'
        END AS {eye}_eye,
        {eye}_referral_probability,"""


def _eye_finding(eye: str) -> str:
    """', right eye referable' (ungradable, missing), or NULL when the eye refers nothing."""
    return (
        f"CASE WHEN {eye}_eye IN ('referable', 'ungradable', 'missing') "
        f"THEN ', {eye} eye ' || {eye}_eye END"
    )


SCREENING_OUTCOMES = f"""
CREATE VIEW screening_outcomes AS
WITH shown AS (
    SELECT
        r.*,
        CASE
            WHEN r.status IN ('registered', 'queued', 'processing') THEN 'pending'
            WHEN r.status <> 'done' OR r.gradable = FALSE OR r.model_version IS NULL
                THEN 'ungradable'
            WHEN r.referable THEN 'referable'
            ELSE 'not_referable'
        END AS outcome
    FROM study_results AS r
    WHERE r.study_id IS NOT NULL
),
counted AS (
    SELECT
        batch,
        study_id,
        max(patient_pseudonym) AS patient_pseudonym,
        count(*) AS images,
        sum(CASE WHEN outcome = 'pending' THEN 1 ELSE 0 END) AS pending,
        {_eye_counts("right", "R")}
        {_eye_counts("left", "L")}
        sum(CASE WHEN (laterality IS NULL OR laterality NOT IN ('R', 'L'))
            AND outcome = 'referable' THEN 1 ELSE 0 END) AS unlateralised_referable,
        {{model_versions}} AS model_version
    FROM shown
    GROUP BY batch, study_id
),
eyes AS (
    SELECT
        batch,
        study_id,
        patient_pseudonym,
        images,
        pending,
        {_eye_state("right")}
        {_eye_state("left")}
        unlateralised_referable,
        model_version
    FROM counted
),
findings AS (
    SELECT
        eyes.*,
        substr(
            coalesce({_eye_finding("right")}, '')
            || coalesce({_eye_finding("left")}, '')
            || CASE WHEN unlateralised_referable > 0
                THEN ', image without laterality referable' ELSE '' END,
            3
        ) AS finding
    FROM eyes
)
SELECT
    patient_pseudonym,
    study_id AS study,
    batch,
    CASE WHEN pending > 0 THEN 'pending' WHEN finding <> '' THEN 'refer' ELSE 'no_refer' END
        AS decision,
    CASE
        WHEN pending > 0 THEN 'images not finished: ' || CAST(pending AS VARCHAR(20))
        WHEN finding <> '' THEN finding
        ELSE 'no referable finding in either eye'
    END AS reason,
    right_eye,
    right_referral_probability,
    left_eye,
    left_referral_probability,
    images,
    model_version
FROM findings
"""

COMMENTS = {
    "study_results": (
        "label, probability, generated_text and text_agrees are NULL for an ungradable "
        "image: the model ran on it, but its label is not a result",
        {
            "gradable": "whether the photograph can be graded (mdf.imaging.quality); NULL for "
            "a prediction made before gradability was assessed",
            "quality_score": "quality score, 0 to 1: gradable from 0.5 up",
            "quality_reason": "comma-separated reasons an image is ungradable (no_fundus, "
            "small_field, off_centre, occluded, too_dark, overexposed, out_of_focus, hazy, "
            "low_contrast); NULL when gradable",
            "label": "predicted label of the image's shown prediction (see the view); NULL "
            "when the image is ungradable",
            "probability": "probability of that label (0 to 1); NULL when ungradable",
            "generated_text": "the model's generated answer; NULL when ungradable",
            "text_agrees": "whether the generated text names the same label as the scores; "
            "NULL when ungradable",
            "referable": "whether a referable label reached its threshold (the model "
            "version's, else the settings'); NULL when ungradable or when the model has no "
            "referable label",
            "referral_probability": "highest probability among the referable labels the "
            "model has; NULL when it has none",
        },
    ),
    "screening_outcomes": (
        "One row per patient, study and batch: refer, no_refer or pending, with the reason "
        "and each eye's result, over each image's shown prediction (study_results)",
        {
            "patient_pseudonym": "keyed HMAC-SHA256 pseudonym of the patient ID",
            "study": "the study's id (studies.id), not its key: study keys can identify a "
            "patient; images without a study are only in study_results",
            "batch": "name of the delivery; a study delivered over two nights is decided "
            "per night, on that night's images",
            "decision": "pending while any image of the study is not finished; refer when an "
            "eye is referable, ungradable or missing (both eyes are expected), or an image "
            "without laterality is referable; else no_refer",
            "reason": "why: e.g. 'right eye referable, left eye missing', 'no referable "
            "finding in either eye', 'images not finished: 2'",
            "right_eye": "pending (an image still on its way), referable (a gradable image "
            "is), missing (no image), ungradable (none gradable: rejected, failed or "
            "ungradable images), or not_referable; images without laterality count for "
            "neither eye",
            "right_referral_probability": "highest referral probability among the right "
            "eye's gradable images",
            "left_eye": "the same for the left eye",
            "left_referral_probability": "the same for the left eye",
            "images": "images of the study in this batch, with and without laterality",
            "model_version": "comma-separated model versions of the shown predictions",
        },
    ),
}


def _revision(name: str) -> ModuleType:
    return op.get_context().script.get_revision(name).module


def _create_views(study_results: str, comments: dict[str, tuple[str, dict[str, str]]]) -> None:
    """study_results as given and 0004's study_rollup over it, documented on PostgreSQL."""
    dialect = op.get_bind().dialect.name
    r2, r4 = _revision("0002"), _revision("0004")
    op.execute(study_results)
    rollup = r2.STUDY_ROLLUP.replace(r4.STUDY_ROLLUP_DROPPED, "")
    op.execute(rollup.format(model_versions=r2.MODEL_VERSIONS[dialect]))
    if "screening_outcomes" in comments:
        op.execute(SCREENING_OUTCOMES.format(model_versions=r2.MODEL_VERSIONS[dialect]))
    if dialect == "postgresql":
        for view, (summary, columns) in comments.items():
            op.execute(f"COMMENT ON VIEW {view} IS {r4._literal(summary)}")
            for column, description in columns.items():
                op.execute(f"COMMENT ON COLUMN {view}.{column} IS {r4._literal(description)}")


def _previous_comments() -> dict[str, tuple[str, dict[str, str]]]:
    """The descriptions 0004 gave its views."""
    return _revision("0004")._comments(_revision("0002"))


def upgrade() -> None:
    op.execute("DROP VIEW study_rollup")
    op.execute("DROP VIEW study_results")
    with op.batch_alter_table("predictions") as batch:  # SQLite: a copy of the table
        for column, type_ in PREDICTION_COLUMNS.items():
            batch.add_column(sa.Column(column, type_, nullable=True))
        for column, type_ in MODEL_ANSWER.items():
            batch.alter_column(column, existing_type=type_, nullable=True)
    op.add_column(
        "model_versions",
        sa.Column(
            "referral",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )
    comments = _previous_comments()
    results_summary, results_columns = comments["study_results"]
    note, changed = COMMENTS["study_results"]
    comments["study_results"] = (f"{results_summary}; {note}", results_columns | changed)
    comments["screening_outcomes"] = COMMENTS["screening_outcomes"]
    _create_views(STUDY_RESULTS, comments)


def downgrade() -> None:
    op.execute("DROP VIEW screening_outcomes")
    op.execute("DROP VIEW study_rollup")
    op.execute("DROP VIEW study_results")
    op.drop_column("model_versions", "referral")
    # 0004 needs an answer in every prediction: an ungradable image without one loses its row.
    op.execute("DELETE FROM predictions WHERE label IS NULL")
    with op.batch_alter_table("predictions") as batch:
        for column, type_ in MODEL_ANSWER.items():
            batch.alter_column(column, existing_type=type_, nullable=False)
        for column in PREDICTION_COLUMNS:
            batch.drop_column(column)
    _create_views(_revision("0004").STUDY_RESULTS, _previous_comments())
