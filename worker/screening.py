"""What a worker adds to each prediction for screening: the photograph's gradability and
the referral call.

A program acts on referrals, not labels. An image is referable when it is gradable and
any referable label the model has reaches its threshold. The thresholds are those the
served model version recorded when training chose them on its validation patients
(``training.referral``), label by label; a label the version recorded none for takes the
settings' (``MDF_REFERRAL_THRESHOLDS``, else 0.5). The gradability thresholds are
``mdf.imaging.quality``'s defaults, each overridable by ``MDF_QUALITY``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from mdf.imaging.quality import Quality, QualityThresholds


def quality_thresholds(overrides: Mapping[str, float]) -> QualityThresholds:
    """The default thresholds with ``overrides`` (MDF_QUALITY); an unknown name is refused."""
    known = {field.name for field in fields(QualityThresholds)}
    if unknown := sorted(set(overrides) - known):
        raise ValueError(
            f"MDF_QUALITY names unknown gradability thresholds {unknown}; known: {sorted(known)}"
        )
    return replace(QualityThresholds(), **overrides)


def quality_columns(quality: Quality) -> dict[str, Any]:
    """The prediction's quality columns: reasons comma-separated, NULL when gradable."""
    return {
        "gradable": quality.gradable,
        "quality_score": quality.score,
        "quality_reason": ",".join(quality.reasons) or None,
    }


@dataclass(frozen=True)
class Referral:
    """Each referable label the served model has, with the threshold from which it refers."""

    thresholds: Mapping[str, float]

    @classmethod
    def for_model(
        cls,
        labels: Sequence[str],
        recorded: Mapping[str, Any] | None,
        defaults: Mapping[str, float],
    ) -> Referral:
        """``defaults``: the referable labels and their configured thresholds; ``recorded``:
        the version's ``model_versions.referral`` (its ``labels`` win, label by label)."""
        chosen = (recorded or {}).get("labels", {})
        return cls(
            {
                label: float(chosen[label]["threshold"]) if label in chosen else default
                for label, default in defaults.items()
                if label in labels
            }
        )

    def apply(self, probabilities: Mapping[str, float]) -> tuple[bool | None, float | None]:
        """(referable, the highest referable label's probability); (None, None) for a model
        with no referable label, which can refer no one."""
        if not self.thresholds:
            return None, None
        referable = any(probabilities[label] >= t for label, t in self.thresholds.items())
        return referable, max(float(probabilities[label]) for label in self.thresholds)
