"""Packed label scoring (the prompt once per image, every answer behind it) against the per-label
reference rows: the same probabilities and masks, one text row per image, fewer FLOPs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mdf_model import Classifier, PreparedInput
from tests.mdf_model.test_model_classifier import MULTICLASS

LABEL_SETS = {"2 labels": ("acquired", "inherited"), "7 labels": MULTICLASS}
NOTES = ("age 54, sex female, history of diabetes.", "family history of night blindness.", "")


@pytest.fixture(scope="module", params=list(LABEL_SETS))
def scorer(request: pytest.FixtureRequest, make_model) -> Classifier:
    """A tiny model with fusion on (alpha 0.5) and the label set of the parameter."""
    model = make_model(labels=LABEL_SETS[request.param], alpha=0.5, alpha_learnable=False)
    assert not any(block.is_identity for block in model.fusion.blocks.values())
    return Classifier(model.eval())


def batch(classifier: Classifier, images: Sequence[np.ndarray], notes: bool) -> list:
    """Four studies of three photographs; with ``notes``, prompts of different lengths."""
    texts = [*NOTES, NOTES[0]] if notes else [None] * 4
    pictures = [*images, images[0]]
    return [classifier.prepare(i, t) for i, t in zip(pictures, texts, strict=True)]


def scores(classifier: Classifier, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        label_scores, seg_logits = classifier.model.score(inputs)
    return label_scores, seg_logits


@pytest.mark.parametrize("notes", [False, True], ids=["no notes", "clinical notes"])
def test_packed_scoring_gives_the_reference_probabilities(
    scorer: Classifier, fundus_images: list[np.ndarray], notes: bool
) -> None:
    studies = batch(scorer, fundus_images, notes)
    reference, reference_masks = scores(scorer, scorer.scoring_inputs(studies))
    packed, packed_masks = scores(scorer, scorer.packed_scoring_inputs(studies))
    expected = torch.softmax(reference.view(len(studies), -1), -1)
    torch.testing.assert_close(
        torch.softmax(packed.view(len(studies), -1), -1), expected, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(packed_masks, reference_masks, atol=1e-5, rtol=1e-5)
    # And what the API returns is the packed path's.
    results = scorer.classify_prepared(studies, generate_text=False)
    actual = torch.tensor([list(r.probabilities.values()) for r in results])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    # The scores depend on the image and on the label, so equality is not vacuous.
    assert expected.std(dim=0).max() > 1e-4 and expected.std(dim=1).min() > 1e-4


def test_answers_of_different_lengths_are_padded_apart(
    scorer: Classifier, fundus_images: list[np.ndarray]
) -> None:
    lengths = [len(answer) for answer in scorer.answer_token_ids]
    inputs = scorer.packed_scoring_inputs(batch(scorer, fundus_images, notes=True))
    # One row per image, holding every answer once.
    assert inputs.input_ids.shape[0] == inputs.pixel_values.shape[0] == 4
    assert (inputs.lm_labels != -100).sum(-1).tolist() == [sum(lengths)] * 4
    if len(scorer.labels) == 7:
        assert len(set(lengths)) > 1


def test_the_prompt_and_the_image_states_run_once_per_image(
    scorer: Classifier, fundus_images: list[np.ndarray]
) -> None:
    model = scorer.model
    rows: list[int] = []
    handle = model.base.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        scorer.classify_prepared(
            batch(scorer, fundus_images, notes=True), segment=False, generate_text=False
        )
    finally:
        handle.remove()
    # Cross-attention and fusion keys and values are computed per text row: one per image.
    assert rows == [4]


@pytest.mark.parametrize("notes", [False, True], ids=["no notes", "clinical notes"])
def test_text_continued_from_the_scoring_pass_is_what_generate_gives(
    scorer: Classifier, fundus_images: list[np.ndarray], notes: bool
) -> None:
    """The text generated from the scoring pass's cache is token for token what a separate
    ``generate()`` (its own vision tower, U-Net and prefill) gives, and so are the scores."""
    studies = batch(scorer, fundus_images, notes)
    prompts = scorer.generation_inputs(studies)
    scoring = scorer.packed_scoring_inputs(studies)
    with torch.no_grad():
        expected = scorer.model.generate(prompts, max_new_tokens=12)
        reference_scores, reference_masks = scorer.model.score(scoring)
        label_scores, masks, sequences = scorer.model.score_and_generate(
            scoring, prompts, max_new_tokens=12
        )
    assert torch.equal(sequences, expected)
    assert len(set(map(tuple, expected[:, prompts.input_ids.shape[1] :].tolist()))) > 1
    torch.testing.assert_close(label_scores, reference_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(masks, reference_masks, atol=1e-5, rtol=1e-5)


def test_packed_scoring_counts_fewer_flops(make_model, fundus_images: list[np.ndarray]) -> None:
    classifier = Classifier(make_model(labels=MULTICLASS, alpha=0.5).eval())
    studies: list[PreparedInput] = batch(classifier, fundus_images, notes=True)

    def flops(inputs: Any) -> int:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            scores(classifier, inputs)
        return counter.get_total_flops()

    reference = flops(classifier.scoring_inputs(studies))
    packed = flops(classifier.packed_scoring_inputs(studies))
    assert packed < reference, f"packed {packed:.4g} FLOPs, per-label rows {reference:.4g}"
    print(f"7 labels, 4 images: packed {packed:.4g} FLOPs, per-label rows {reference:.4g}")
