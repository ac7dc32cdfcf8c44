"""Should a challenger replace the champion? A rule anyone can read in the report.

The challenger must beat the champion on the same held-out set by a margin on
the chosen metric, and may not lose more than a tolerance of recall on any
class: a model that gains accuracy by giving up on the rare inherited diseases
is not promoted.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.metrics import Evaluation


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    challenger: Evaluation,
    champion: Evaluation | None,
    *,
    metric: str = "accuracy",
    margin: float = 0.01,
    max_recall_drop: float = 0.05,
) -> Decision:
    score = getattr(challenger, metric)
    if champion is None:
        return Decision(True, f"no champion yet; challenger {metric} {score:.3f}")
    if challenger.labels != champion.labels:
        return Decision(
            False, f"labels differ: challenger {challenger.labels}, champion {champion.labels}"
        )
    best = getattr(champion, metric)
    if score < best + margin:
        return Decision(
            False,
            f"{metric} {score:.3f} does not beat the champion's {best:.3f} by {margin:.3f}",
        )
    for label, scores in challenger.per_class.items():
        drop = champion.per_class[label].recall - scores.recall
        if drop > max_recall_drop:
            return Decision(
                False,
                f"recall of {label} drops by {drop:.3f} "
                f"({champion.per_class[label].recall:.3f} -> {scores.recall:.3f}), "
                f"more than the {max_recall_drop:.3f} allowed",
            )
    return Decision(True, f"{metric} {score:.3f} beats the champion's {best:.3f} by {margin:.3f}")
