"""A night's screening outcomes as the run-batch summary and the report read them: the
decisions of the ``screening_outcomes`` view, and, on a validation night, how well they
agree with the ground truth.

A delivery whose manifest carries labels (``images.label``) is a validation night. The
truth follows the program's rule: an eye is referable when any of its labelled images
has a referable label (``MDF_REFERABLE_LABELS``), a patient's study when any of its
labelled images has one (an image without laterality included, as the view's decision
includes it). The call is the view's: an eye ``referable`` or ``ungradable`` counts as
referred (a photograph that cannot be graded is a referral), ``not_referable`` as not;
a study ``refer`` or ``no_refer``. Eyes and studies still pending, or without a labelled
image, are left out. Accuracy, sensitivity and specificity come from scikit-learn.

The scheduler and the analysts' read side may not import each other, so both read the
view here, one layer below them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sklearn import metrics
from sqlalchemy.orm import Session

from db.models import Batch, Image
from db.views import DECISIONS, SCREENING_OUTCOMES

__all__ = ["Agreement", "Validation", "decisions", "validate"]

EYES = {"R": "right_eye", "L": "left_eye"}
REFERRED_EYE = {"referable": True, "ungradable": True, "not_referable": False}
REFERRED_STUDY = {"refer": True, "no_refer": False}


def decisions(session: Session, batch: str) -> dict[str, int]:
    """Studies of the batch per decision, every decision present."""
    view = SCREENING_OUTCOMES.c
    counted = session.execute(
        sa.select(view.decision, sa.func.count()).where(view.batch == batch).group_by(view.decision)
    )
    return {decision: 0 for decision in DECISIONS} | dict(counted.all())


@dataclass(frozen=True)
class Agreement:
    """Referral against the truth over ``n`` eyes or studies."""

    n: int
    #: rows: truly not referable, referable; columns: not referred, referred
    confusion: tuple[tuple[int, int], tuple[int, int]]
    accuracy: float | None  # None when nothing was compared
    sensitivity: float | None  # referred among the referable; None without one
    specificity: float | None  # not referred among the not referable; None without one

    @classmethod
    def of(cls, truth: Sequence[bool], referred: Sequence[bool]) -> Agreement:
        if not truth:
            return cls(0, ((0, 0), (0, 0)), None, None, None)
        matrix = metrics.confusion_matrix(truth, referred, labels=[False, True])
        (tn, fp), (fn, tp) = matrix.tolist()
        return cls(
            n=len(truth),
            confusion=((tn, fp), (fn, tp)),
            accuracy=float(metrics.accuracy_score(truth, referred)),
            sensitivity=_recall(truth, referred, True),
            specificity=_recall(truth, referred, False),
        )


def _recall(truth: Sequence[bool], referred: Sequence[bool], label: bool) -> float | None:
    """Recall of ``label`` (sensitivity for True, specificity for False); None without one."""
    if label not in truth:
        return None
    return float(metrics.recall_score(truth, referred, pos_label=label))


@dataclass(frozen=True)
class Validation:
    eyes: Agreement
    patients: Agreement  # a patient's study in this batch, as the view decides it


def validate(session: Session, batch: str, referable_labels: Sequence[str]) -> Validation | None:
    """The batch's decisions against its labels; None when no image of it has a label."""
    labelled = session.execute(
        sa.select(Image.study_id, Image.laterality, Image.label)
        .join(Batch, Batch.id == Image.batch_id)
        .where(Batch.name == batch, Image.label.is_not(None), Image.study_id.is_not(None))
    ).all()
    if not labelled:
        return None
    referable = set(referable_labels)
    eye_truth: dict[tuple[int, str], bool] = {}
    study_truth: dict[int, bool] = {}
    for study, laterality, label in labelled:
        positive = label in referable
        study_truth[study] = study_truth.get(study, False) or positive
        if laterality in EYES:
            eye_truth[study, laterality] = eye_truth.get((study, laterality), False) or positive
    view = SCREENING_OUTCOMES.c
    outcomes = session.execute(
        sa.select(view.study, view.decision, view.right_eye, view.left_eye).where(
            view.batch == batch
        )
    ).all()
    eyes: list[tuple[bool, bool]] = []
    studies: list[tuple[bool, bool]] = []
    for row in outcomes:
        if row.study in study_truth and row.decision in REFERRED_STUDY:
            studies.append((study_truth[row.study], REFERRED_STUDY[row.decision]))
        for laterality, column in EYES.items():
            state = getattr(row, column)
            if (row.study, laterality) in eye_truth and state in REFERRED_EYE:
                eyes.append((eye_truth[row.study, laterality], REFERRED_EYE[state]))
    return Validation(_agreement(eyes), _agreement(studies))


def _agreement(pairs: list[tuple[bool, bool]]) -> Agreement:
    return Agreement.of([truth for truth, _ in pairs], [referred for _, referred in pairs])
