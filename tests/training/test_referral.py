"""Referral thresholds chosen on constructed scores: the target sensitivity is reached at
the highest threshold that reaches it, and measured again on other images."""

from __future__ import annotations

import numpy as np
import pytest

from training.referral import (
    Operating,
    choose_threshold,
    choose_thresholds,
    measure,
    measure_thresholds,
)


def test_a_small_set_gives_the_exact_threshold() -> None:
    scores, positive = [0.1, 0.4, 0.35, 0.8], [False, False, True, True]
    assert choose_threshold(scores, positive, 0.5) == Operating(0.8, 0.5, 1.0, 2, 2)
    assert choose_threshold(scores, positive, 0.9) == Operating(0.35, 1.0, 0.5, 2, 2)
    assert choose_threshold(scores, positive, 1.0) == Operating(0.35, 1.0, 0.5, 2, 2)
    only_positives = choose_threshold([0.3, 0.6], [True, True], 0.9)
    assert only_positives == Operating(0.3, 1.0, None, 2, 0)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_target_is_reached_at_the_highest_threshold_that_reaches_it(target: float) -> None:
    rng = np.random.default_rng(0)
    diseased, healthy = rng.uniform(0.2, 1.0, 137), rng.uniform(0.0, 0.6, 263)
    scores = np.concatenate([diseased, healthy])
    positive = np.arange(len(scores)) < len(diseased)
    chosen = choose_threshold(scores.tolist(), positive.tolist(), target)
    t = chosen.threshold
    assert chosen.sensitivity == (diseased >= t).mean() >= target
    assert (diseased > t).mean() < target  # any higher threshold misses the target
    assert chosen.specificity == pytest.approx((healthy < t).mean())
    assert (chosen.positives, chosen.negatives) == (137, 263)
    # what the workers apply reproduces it: referred from the threshold up
    again = measure(t, scores.tolist(), positive.tolist())
    assert again.sensitivity == chosen.sensitivity
    assert again.specificity == pytest.approx(chosen.specificity)


def test_each_referable_label_with_true_images_gets_a_threshold() -> None:
    truth = ["inherited", "acquired", "inherited", "acquired"]
    probabilities = [{"inherited": p, "acquired": 1 - p} for p in (0.9, 0.3, 0.45, 0.6)]
    referral = choose_thresholds(truth, probabilities, ["inherited", "glaucoma"], 0.9)
    assert referral == {
        "target_sensitivity": 0.9,
        "labels": {
            "inherited": {
                "threshold": 0.45,
                "sensitivity": 1.0,
                "specificity": 0.5,
                "positives": 2,
                "negatives": 2,
            }
        },
    }
    held_out = measure_thresholds(
        referral, ["inherited", "acquired"], [{"inherited": 0.4}, {"inherited": 0.5}]
    )
    assert held_out == {
        "inherited": {
            "threshold": 0.45,
            "sensitivity": 0.0,
            "specificity": 0.0,
            "positives": 1,
            "negatives": 1,
        }
    }


def test_nothing_to_reach_is_refused() -> None:
    with pytest.raises(ValueError, match="no image carries the label"):
        choose_threshold([0.2, 0.4], [False, False], 0.9)
    with pytest.raises(ValueError, match="target sensitivity"):
        choose_threshold([0.2, 0.4], [True, False], 0.0)
