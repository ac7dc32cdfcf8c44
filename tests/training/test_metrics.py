"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import Evaluation, auroc, evaluate, expected_calibration_error

LABELS = ["acquired", "inherited"]


def p(inherited: float) -> dict[str, float]:
    return {"acquired": 1 - inherited, "inherited": inherited}


def test_binary_metrics_by_hand() -> None:
    truth = ["acquired", "acquired", "acquired", "inherited", "inherited"]
    probs = [p(0.1), p(0.4), p(0.8), p(0.7), p(0.3)]
    text = ["acquired", None, "inherited", "inherited", "acquired"]
    result = evaluate(LABELS, truth, probs, text)

    assert result.accuracy == pytest.approx(3 / 5)
    assert result.confusion == [[2, 1], [1, 1]]
    assert result.per_class["acquired"].precision == pytest.approx(2 / 3)
    assert result.per_class["inherited"].recall == pytest.approx(1 / 2)
    assert result.per_class["inherited"].f1 == pytest.approx(0.5)
    # Positive scores 0.7, 0.3 against negatives 0.1, 0.4, 0.8: 3 of 6 pairs ordered right.
    assert result.auroc == pytest.approx(3 / 6)
    assert result.none_rate == pytest.approx(1 / 5)
    assert result.text_score_agreement == pytest.approx(4 / 5)


def test_auroc_counts_ties_as_half_and_needs_both_classes() -> None:
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
    assert auroc(np.array([0.2, 0.9]), np.array([False, True])) == 1.0
    assert auroc(np.array([0.2, 0.9]), np.array([True, True])) is None


def test_calibration_error_is_zero_only_when_confidence_matches_accuracy() -> None:
    confidence = np.array([0.75] * 4)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(confidence, np.array([1, 0, 0, 0])) == pytest.approx(0.5)


def test_multiclass_and_round_trip() -> None:
    labels = ["normal", "glaucoma", "stargardt"]
    probs = [
        {"normal": 0.8, "glaucoma": 0.1, "stargardt": 0.1},
        {"normal": 0.1, "glaucoma": 0.7, "stargardt": 0.2},
        {"normal": 0.2, "glaucoma": 0.5, "stargardt": 0.3},
    ]
    result = evaluate(labels, ["normal", "glaucoma", "stargardt"], probs, [None] * 3)
    assert result.accuracy == pytest.approx(2 / 3) and result.none_rate == 1.0
    assert result.confusion == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert Evaluation.from_dict(result.to_dict()) == result


def test_unknown_truth_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="not among"):
        evaluate(LABELS, ["normal"], [p(0.5)], [None])
