"""The starting model as a training run configures it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdf.synthetic.fundus import generate_case
from training.config import TrainConfig
from training.run import load_for_training


@pytest.mark.parametrize("weight", [None, 0.25])
def test_the_configured_segmentation_weight_weighs_the_training_loss(
    tiny_checkpoint: Path, weight: float | None
) -> None:
    classifier = load_for_training(tiny_checkpoint, TrainConfig(seg_loss_weight=weight))
    case = generate_case(0, size=128, with_text=False)
    prepared = classifier.prepare(case.image, seg_target=case.vessel_mask)

    output = classifier.model(classifier.training_inputs([prepared], [case.label]))

    expected = 1.0 if weight is None else weight  # None: the model's own weight, 1 for tiny
    assert float(output.loss) == pytest.approx(
        float(output.lm_loss) + expected * float(output.seg_loss)
    )
