"""Evaluation metrics for a classifier's answers on a held-out set.

Plain numpy, so a report can be recomputed from stored predictions. Besides the
usual accuracy, per-class precision/recall/F1, AUROC and confusion matrix, it
measures two failure modes of a generative classifier: answers whose text names
no label (the paper's "None" class) and miscalibrated probabilities (ECE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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
    """Area under the ROC curve by the rank-sum statistic (ties count half)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, for plotting."""
    order = np.argsort(-scores, kind="mergesort")
    hits = positive[order].astype(float)
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - hits) / max((1 - hits).sum(), 1)])
    return fpr, tpr


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(error)


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

    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, (y, predicted), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassScores(
            float(precision), float(recall), float(f1), int(confusion[i].sum())
        )
    if len(labels) == 2:
        area = auroc(probs[:, 1], y == 1)
    else:
        areas = [auroc(probs[:, i], y == i) for i in range(len(labels))]
        present = [a for a in areas if a is not None]
        area = float(np.mean(present)) if present else None
    named = [t for t in text_labels if t is not None]
    agree = [t == labels[p] for t, p in zip(text_labels, predicted, strict=True)]
    return Evaluation(
        labels=labels,
        n=len(truth),
        accuracy=float((predicted == y).mean()),
        per_class=per_class,
        macro_f1=float(np.mean([s.f1 for s in per_class.values()])),
        auroc=area,
        confusion=confusion.tolist(),
        none_rate=1.0 - len(named) / len(text_labels),
        text_score_agreement=float(np.mean(agree)),
        ece=expected_calibration_error(probs.max(axis=1), predicted == y),
    )
