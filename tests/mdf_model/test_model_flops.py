"""The analytic FLOP estimate against torch's FLOP counter on the tiny model."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mdf_model import PRESETS, Classifier
from mdf_model.flops import estimate_flops, floor_flops
from tests.mdf_model.conftest import synthetic_fundus
from tests.mdf_model.test_model_classifier import MULTICLASS

# The estimate leaves out norms, activations and softmax; so does the counter. What is left is
# the counter's own rounding of nothing: the two agree to this relative tolerance.
TOLERANCE = 1e-3


def counted(classifier: Classifier, image, *, segment: bool) -> tuple[float, int]:
    """Executed FLOPs of label scoring for one image, and its prompt length."""
    item = classifier.prepare(image)
    inputs = classifier.packed_scoring_inputs([item])
    # The math kernel decomposes attention into matrix products the counter sees.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        classifier.model.score(inputs, segment=segment)
    return counter.get_total_flops(), len(item.prompt_ids)


@pytest.mark.parametrize(
    ("changes", "segment"),
    [
        ({}, True),
        ({}, False),
        ({"vision_tiles": 4}, False),
        ({"labels": MULTICLASS}, True),
        ({"baseline": True}, True),
    ],
    ids=["1 tile, mask", "1 tile, labels only", "4 tiles", "7 labels", "baseline"],
)
def test_estimate_matches_the_flop_counter(
    make_model, fundus_images, changes: dict, segment: bool
) -> None:
    classifier = Classifier(make_model(**changes))
    image = fundus_images[1]
    flops, prompt_tokens = counted(classifier, image, segment=segment)
    estimate = estimate_flops(
        classifier.model.config,
        image_height=image.shape[0],
        image_width=image.shape[1],
        prompt_tokens=prompt_tokens,
        answer_tokens=[len(a) for a in classifier.answer_token_ids],
        segment=segment,
    )
    assert estimate.total == pytest.approx(flops, rel=TOLERANCE)


def test_the_floor_is_what_one_used_tile_computes(make_model) -> None:
    """A photograph smaller than a tile uses one: with vision_tiles 1, label scoring without
    masks computes its floor; with 4 the three padding slots come on top."""
    image = synthetic_fundus(100, 100, seed=0)
    for tiles in (1, 4):
        classifier = Classifier(make_model(vision_tiles=tiles))
        flops, prompt_tokens = counted(classifier, image, segment=False)
        floor = floor_flops(
            classifier.model.config,
            image_height=100,
            image_width=100,
            prompt_tokens=prompt_tokens,
            answer_tokens=[len(a) for a in classifier.answer_token_ids],
        )
        assert floor.tiles_used == 1
        if tiles == 1:
            assert flops == pytest.approx(floor.total, rel=TOLERANCE)
        else:
            assert flops > 1.05 * floor.total


def test_a_512px_image_uses_the_one_tile_the_11b_preset_computes() -> None:
    one = estimate_flops(PRESETS["llama-3.2-11b-vision"])
    four = estimate_flops(PRESETS["llama-3.2-11b-vision-4-tiles"])
    assert (one.tiles_used, one.tiles_computed) == (1, 1)
    assert (four.tiles_used, four.tiles_computed) == (1, 4)
    # Four slots cost the vision tower more than four times one (attention spans all slots).
    assert four.vision_tower > 4 * one.vision_tower > 10 * one.unet
    assert one.total < 6.5e12 < four.total
