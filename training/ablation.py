"""The paper's ablation (its Table 1) on our data: which part of the fusion earns its keep.

Every variant starts from the same checkpoint, trains on the same patients with the same
budget and is scored on the same held-out patients, so the rows differ only in what trains:
the plain MLLM (no U-Net, no fusion), the fused model with the U-Net frozen, with the MLLM
frozen, and with both unfrozen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.dataset import prepare
from training.metrics import Evaluation
from training.run import score, train_on
from training.splits import Example

#: Table 1's rows, in its order.
TABLE_VARIANTS = ("baseline", "frozen_unet", "frozen_mllm", "full")


@dataclass
class AblationRow:
    variant: str
    evaluation: Evaluation
    seconds: float
    classifier: Any  # the trained mdf_model.Classifier, for inspection


def run_ablation(
    start: Path,
    train: list[Example],
    evaluation: list[Example],
    config: TrainConfig,
    variants: Sequence[str] = TABLE_VARIANTS,
    *,
    with_text: bool = True,
) -> list[AblationRow]:
    """Train each variant from ``start`` on ``train``; score it on ``evaluation``."""
    rows = []
    for variant in variants:
        began = time.perf_counter()
        classifier, _ = train_on(start, train, config.model_copy(update={"variant": variant}))
        held_out = prepare(classifier, evaluation, with_text=with_text)
        rows.append(
            AblationRow(
                variant,
                score(classifier, held_out).evaluation,
                time.perf_counter() - began,
                classifier,
            )
        )
    return rows


def format_table(rows: Sequence[AblationRow]) -> str:
    """Rows as an aligned text table: accuracy, macro F1, AUROC, per-class recall, seconds."""
    labels = rows[0].evaluation.labels if rows else []
    header = ["variant", "accuracy", "macro_f1", "auroc", *(f"recall_{x}" for x in labels), "s"]
    lines = [header]
    for row in rows:
        e = row.evaluation
        auroc = "-" if e.auroc is None else f"{e.auroc:.3f}"
        recalls = [f"{e.per_class[x].recall:.3f}" for x in labels]
        lines.append(
            [
                row.variant,
                f"{e.accuracy:.3f}",
                f"{e.macro_f1:.3f}",
                auroc,
                *recalls,
                f"{row.seconds:.0f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )
