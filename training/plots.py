"""The evaluation report: a JSON document and PNG plots beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np

from training.metrics import Evaluation, roc_curve


def plot_losses(history: dict[str, Any], path: Path) -> None:
    """Loss curves per component: answer loss (MLLM, fusion, FiLM) and segmentation (U-Net)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((axes[0], "lm_loss", "answer loss"), (axes[1], "seg_loss", "U-Net")):
        for split in ("train", "validation"):
            values = [epoch.get(key) for epoch in history[split]]
            if any(v is not None for v in values):
                axis.plot(range(1, len(values) + 1), values, marker="o", label=split)
        for name, epoch in history.get("stopped", {}).items():
            if epoch is not None and (key == "seg_loss") == (name == "unet"):
                axis.axvline(epoch, linestyle="--", color="grey")
                axis.annotate(f"{name} stops", (epoch, axis.get_ylim()[1]), fontsize=8)
        axis.set(title=title, xlabel="epoch")
        if axis.get_lines():
            axis.legend()
        else:
            axis.text(0.5, 0.5, "no reference masks", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_roc(evaluation: Evaluation, truth: list[str], scores: list[float], path: Path) -> None:
    positive = np.array([t == evaluation.labels[-1] for t in truth])
    fpr, tpr = roc_curve(np.array(scores), positive)
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot(fpr, tpr, label=f"AUROC {evaluation.auroc or float('nan'):.3f}")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(evaluation: Evaluation, path: Path) -> None:
    matrix = np.array(evaluation.confusion)
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.imshow(matrix, cmap="Blues")
    ticks = range(len(evaluation.labels))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="confusion")
    axis.set_xticklabels(evaluation.labels, rotation=30)
    axis.set_yticklabels(evaluation.labels)
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(directory: Path, report: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path
