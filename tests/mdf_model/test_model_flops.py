"""The analytic FLOP estimate against torch's FLOP counter on the tiny model."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mdf_model import PRESETS, Classifier
from mdf_model.flops import estimate_flops


@pytest.mark.parametrize("baseline", [False, True])
def test_estimate_matches_the_flop_counter(make_model, fundus_images, baseline: bool) -> None:
    classifier = Classifier(make_model(baseline=baseline))
    inputs = classifier.scoring_inputs([classifier.prepare(fundus_images[1])])
    answer_tokens = {len(a) for a in classifier.answer_token_ids}
    assert len(answer_tokens) == 1  # equal answer lengths: rows are not padded
    # The math kernel decomposes attention into matrix products the counter sees.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        classifier.model.score(inputs)
    (answer,) = answer_tokens
    estimate = estimate_flops(
        classifier.model.config,
        prompt_tokens=inputs.input_ids.shape[1] - answer,
        answer_tokens=answer,
    )
    assert estimate.total == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_a_512px_image_uses_one_of_four_tiles_of_the_11b_model() -> None:
    estimate = estimate_flops(PRESETS["llama-3.2-11b-vision"])
    assert (estimate.tiles_used, estimate.tiles_computed) == (1, 4)
    # The vision tower over four 560 px tiles dominates; the U-Net is a small part.
    assert estimate.vision_tower > 10 * estimate.unet
    assert 1e13 < estimate.total < 1e14
