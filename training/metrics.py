"""Evaluation metrics for a classifier's answers on a held-out set.

Computed from stored predictions with scikit-learn, so a report can be recomputed.
Besides the usual accuracy, per-class precision/recall/F1, AUROC and confusion
matrix, it measures two failure modes of a generative classifier: answers whose
text names no label (the paper's "None" class) and miscalibrated probabilities (ECE).
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
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    labels: list[str]
    n: int
    accuracy: float
    per_class: dict[str, ClassScores]
    macro_f1: float
    auroc: float | None  # binary: of labels[1]; multi-class: macro one-vs-rest
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    none_rate: float  # generated answers that name no label
    text_score_agreement: float
    ece: float  # expected calibration error of the predicted label's probability

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        values = dict(data)
        values["per_class"] = {k: ClassScores(**v) for k, v in data["per_class"].items()}
        return cls(**values)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None where a class is absent.

    scikit-learn raises there, but a small evaluation set may lack a class.
    """
    if positive.all() or not positive.any():
        return None
    return float(metrics.roc_auc_score(positive, scores))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, for plotting.

    A rate whose class is absent is drawn as 0 instead of scikit-learn's NaN.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, _ = metrics.roc_curve(positive, scores, drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    """Gap between confidence and accuracy per equal-width bin, weighted by bin size.

    Kept by hand: scikit-learn's calibration_curve returns no bin sizes and closes
    its bins on the right, which would move a confidence of exactly 0.5 and change
    the ECE of stored reports; here bins are [0.5, 0.6) as before.
    """
    which = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    # Bin size / n times |mean gap in the bin| is |summed gap in the bin| / n.
    gap = np.bincount(which, weights=confidence - correct, minlength=bins)
    return float(np.abs(gap).sum() / len(confidence))


def evaluate(
    labels: Sequence[str],
    truth: Sequence[str],
    probabilities: Sequence[Mapping[str, float]],
    text_labels: Sequence[str | None],
) -> Evaluation:
    """Score predictions (per-label probabilities and the label named in the text)."""
    if not (len(truth) == len(probabilities) == len(text_labels)) or not truth:
        raise ValueError("truth, probabilities and text_labels must be non-empty and aligned")
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = set(truth) - index.keys()
    if unknown:
        raise ValueError(f"true labels {sorted(unknown)} are not among {labels}")
    probs = np.array([[p.get(label, 0.0) for label in labels] for p in probabilities])
    y = np.array([index[t] for t in truth])
    predicted = probs.argmax(axis=1)

    classes = np.arange(len(labels))
    # A class never predicted (or never true) scores 0, not a warning.
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0.0
    )
    per_class = {
        label: ClassScores(float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    if len(labels) == 2:
        area = auroc(probs[:, 1], y == 1)
    else:
        # Not roc_auc_score(multi_class="ovr"): it needs every class present.
        areas = [auroc(probs[:, i], y == i) for i in classes]
        present = [a for a in areas if a is not None]
        area = float(np.mean(present)) if present else None
    named = [t for t in text_labels if t is not None]
    agree = [t == labels[p] for t, p in zip(text_labels, predicted, strict=True)]
    return Evaluation(
        labels=labels,
        n=len(truth),
        accuracy=float(metrics.accuracy_score(y, predicted)),
        per_class=per_class,
        macro_f1=float(np.mean(f1)),
        auroc=area,
        confusion=metrics.confusion_matrix(y, predicted, labels=classes).tolist(),
        none_rate=1.0 - len(named) / len(text_labels),
        text_score_agreement=float(np.mean(agree)),
        ece=expected_calibration_error(probs.max(axis=1), predicted == y),
    )
