"""Train/evaluation splits that cannot leak a patient or hide a source shortcut.

A patient's images (both eyes, every visit) stay on one side of a split. A
source (dataset or site) can be held out whole: in the paper's data only one
source has inherited cases and clinical text, so a model can score well by
recognising the source; the held-out-source split shows whether it does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Example:
    """One labelled image as training sees it."""

    image_id: int
    path: str
    frame: int
    label: str
    patient: str | None
    source: str | None
    clinical_text: str | None = None
    mask_path: str | None = None

    @property
    def group(self) -> str:
        return self.patient or f"image:{self.image_id}"


@dataclass(frozen=True)
class Split:
    name: str
    train: list[Example]
    evaluation: list[Example]


def split_by_patient(
    examples: Sequence[Example], *, eval_fraction: float = 0.25, seed: int = 0
) -> Split:
    """Hold out about ``eval_fraction`` of the patients of each label, whole."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.group].append(example)
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        by_label[members[0].label].append(group)  # a patient's first image decides the stratum
    rng = np.random.default_rng(seed)
    held_out: set[str] = set()
    for label in sorted(by_label):
        candidates = by_label[label]
        rng.shuffle(candidates)
        count = max(1, round(len(candidates) * eval_fraction)) if len(candidates) > 1 else 0
        held_out.update(candidates[:count])
    return Split(
        "random_patient",
        [e for e in examples if e.group not in held_out],
        [e for e in examples if e.group in held_out],
    )


def split_by_source(examples: Sequence[Example], held_out: str) -> Split:
    """Evaluate on one source never seen in training (nor its patients, from elsewhere)."""
    sources = {e.source for e in examples}
    if held_out not in sources:
        raise ValueError(f"source {held_out!r} not among {sorted(map(str, sources))}")
    evaluation = [e for e in examples if e.source == held_out]
    patients = {e.group for e in evaluation}
    return Split(
        f"held_out_source:{held_out}",
        [e for e in examples if e.group not in patients],
        evaluation,
    )
