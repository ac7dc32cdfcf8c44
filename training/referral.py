"""Referral thresholds: for each referable label, the probability from which an image is
referred, chosen on the validation patients to reach a target sensitivity.

Screening trades specificity for sensitivity: a missed disease costs a patient more than a
needless referral costs the clinic. So each label's threshold is the highest at which the
validation images truly carrying the label are caught at least at the target rate
(``MDF_REFERRAL_TARGET_SENSITIVITY``, 0.90): the highest keeps the most specificity. The
candidates are the scores themselves, from ``sklearn.metrics.roc_curve``; an image is
referred at a score at or above the threshold, as the workers apply it
(``worker.screening``). What the threshold reached there (sensitivity, specificity and the
counts behind them) is recorded with the model version (``model_versions.referral``); the
run's report also measures it on the held-out patients, which did not choose it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning


@dataclass(frozen=True)
class Operating:
    """A threshold and what it reached on a set of images."""

    threshold: float
    sensitivity: float | None  # None: no image with the label to measure it on
    specificity: float | None  # None: no image without the label
    positives: int  # images with the label
    negatives: int  # images without it


def choose_threshold(scores: Sequence[float], positive: Sequence[bool], target: float) -> Operating:
    """The highest threshold whose sensitivity reaches ``target`` (0 < target <= 1)."""
    if not 0 < target <= 1:
        raise ValueError(f"a target sensitivity is in (0, 1], got {target}")
    truth = np.asarray(positive, dtype=bool)
    if not truth.any():
        raise ValueError("no image carries the label: no sensitivity to reach")
    with warnings.catch_warnings():  # no negatives: the false positive rate is undefined
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = metrics.roc_curve(truth, scores, drop_intermediate=False)
    # Thresholds fall and sensitivity rises along the curve: the first point that reaches
    # the target has the highest threshold (the curve ends at sensitivity 1).
    i = int(np.argmax(tpr >= target - 1e-12))
    negatives = int((~truth).sum())
    return Operating(
        threshold=float(thresholds[i]),
        sensitivity=float(tpr[i]),
        specificity=float(1 - fpr[i]) if negatives else None,
        positives=int(truth.sum()),
        negatives=negatives,
    )


def measure(threshold: float, scores: Sequence[float], positive: Sequence[bool]) -> Operating:
    """What ``threshold`` reaches on other images (the held-out patients)."""
    truth = np.asarray(positive, dtype=bool)
    referred = np.asarray(scores) >= threshold
    positives, negatives = int(truth.sum()), int((~truth).sum())
    return Operating(
        threshold=threshold,
        sensitivity=float(metrics.recall_score(truth, referred)) if positives else None,
        specificity=float(metrics.recall_score(~truth, ~referred)) if negatives else None,
        positives=positives,
        negatives=negatives,
    )


def choose_thresholds(
    truth: Sequence[str],
    probabilities: Sequence[Mapping[str, float]],
    referable: Sequence[str],
    target: float,
) -> dict[str, Any]:
    """``model_versions.referral`` for a model's validation answers: each referable label
    with at least one true image gets a threshold; the others keep the settings'."""
    labels = {}
    for label in referable:
        positive = [t == label for t in truth]
        if any(positive):
            scores = [p[label] for p in probabilities]
            labels[label] = asdict(choose_threshold(scores, positive, target))
    return {"target_sensitivity": target, "labels": labels}


def measure_thresholds(
    referral: Mapping[str, Any],
    truth: Sequence[str],
    probabilities: Sequence[Mapping[str, float]],
) -> dict[str, dict[str, Any]]:
    """Each recorded threshold measured on another set's answers, label by label."""
    return {
        label: asdict(
            measure(
                chosen["threshold"],
                [p[label] for p in probabilities],
                [t == label for t in truth],
            )
        )
        for label, chosen in referral["labels"].items()
    }
