"""Multi-depth scaled cross-attention: base equivalence at alpha 0, masking, generate(), cache;
the skip projection's standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MllamaForConditionalGeneration

from mdf_model import Classifier, MDFModel, ModelInputs
from mdf_model.projection import SkipProjection


def base_logits(model: MDFModel, inputs: ModelInputs) -> torch.Tensor:
    """The plain transformers forward of the base model (each row with its own copy of its
    image), fusion not involved."""
    rows = inputs.rows_per_image
    return model.base(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        pixel_values=inputs.pixel_values.repeat_interleave(rows, 0),
        aspect_ratio_ids=inputs.aspect_ratio_ids.repeat_interleave(rows, 0),
        aspect_ratio_mask=inputs.aspect_ratio_mask.repeat_interleave(rows, 0),
        cross_attention_mask=inputs.cross_attention_mask,
        use_cache=False,
    ).logits


@pytest.fixture(scope="module")
def scoring_batch(classifier: Classifier, prepared) -> list:
    return prepared[:2]


@pytest.mark.parametrize("learnable", [True, False])
def test_alpha_zero_gives_exactly_the_base_logits(
    make_model, scoring_batch, learnable: bool
) -> None:
    model = make_model(alpha=0.0, alpha_learnable=learnable).eval()
    inputs = Classifier(model).scoring_inputs(scoring_batch)
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, base_logits(model, inputs))


def test_nonzero_alpha_changes_the_logits(make_model, scoring_batch) -> None:
    model = make_model(alpha=0.5).eval()
    inputs = Classifier(model).scoring_inputs(scoring_batch)
    with torch.no_grad():
        fused, plain = model(inputs).logits, base_logits(model, inputs)
    assert (fused - plain).abs().max() > 1e-3
    # Outside a forward pass of the MDF model the base model is left alone.
    with torch.no_grad():
        assert torch.equal(base_logits(model, inputs), plain)


@pytest.mark.parametrize(("changes", "learns"), [({"alpha": 0.0}, False), ({}, True)])
def test_the_answer_loss_reaches_the_fusion_only_when_alpha_is_not_zero(
    make_model, scoring_batch, changes: dict, learns: bool
) -> None:
    # Every fusion gradient is a multiple of alpha: at 0 fusion could never start learning.
    model = make_model(**changes).train()
    inputs = Classifier(model).training_inputs(scoring_batch, ["acquired", "inherited"])
    model(inputs).lm_loss.backward()
    for parameter in (model.projection.proj[0].weight, model.fusion.blocks["1"].attn.v_proj.weight):
        assert bool(parameter.grad.abs().sum() > 0) == learns


def test_the_skip_projection_standardises_what_differs_between_images() -> None:
    torch.manual_seed(0)
    projection = SkipProjection([8, 16], 32, grid=2, pool=1).train()
    # A large offset shared by every image, a small part of its own: as U-Net skips are.
    skips = [100 + 0.01 * torch.randn(6, c, 8, 8) for c in (8, 16)]
    tokens = projection(skips)
    assert tokens.std(0).mean() / tokens.pow(2).mean().sqrt() > 0.3
    projection.eval()  # running statistics: an image's tokens do not depend on its batch
    torch.testing.assert_close(projection([s[:1] for s in skips]), projection(skips)[:1])


def test_a_frozen_fusion_keeps_its_standardisation_statistics(make_model) -> None:
    model = make_model(frozen=("fusion",)).train()
    assert model.training and not model.projection.training
    model.set_frozen(())
    assert model.projection.training


def test_base_state_dict_keys_are_unchanged(make_model, tiny_base_dir) -> None:
    model = make_model(alpha=0.5)
    plain = MllamaForConditionalGeneration.from_pretrained(tiny_base_dir, local_files_only=True)
    assert list(model.base.state_dict()) == list(plain.state_dict())


def test_text_rows_that_see_no_image_get_no_fusion(make_model, fundus_images) -> None:
    # Text before <|image|> is masked out of cross-attention by Mllama; fusion must follow.
    template = "Fundus study of the retina, left eye.<|image|>{clinical}Is it {labels}? Answer:"
    plain = make_model(alpha=0.0, prompt_template=template).eval()
    fused = make_model(alpha=1.0, prompt_template=template).eval()
    classifier = Classifier(fused)
    batch = [classifier.prepare(image) for image in fundus_images[:2]]
    inputs = classifier.scoring_inputs(batch)
    image_token = classifier.processor.image_token_id
    with torch.no_grad():
        a, b = plain(inputs).logits, fused(inputs).logits
    for row in range(inputs.input_ids.shape[0]):
        start = int((inputs.input_ids[row] == image_token).nonzero()[0])
        assert start > 5
        assert torch.equal(a[row, :start], b[row, :start])
        assert (a[row, start:] - b[row, start:]).abs().max() > 1e-3


def _generate(model: MDFModel, inputs: ModelInputs, **kwargs):
    return model.generate(
        inputs, max_new_tokens=6, return_dict_in_generate=True, output_scores=True, **kwargs
    )


def _base_generate(model: MDFModel, inputs: ModelInputs):
    """Plain transformers generate() of the base model, fusion not involved."""
    return model.base.generate(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        pixel_values=inputs.pixel_values,
        aspect_ratio_ids=inputs.aspect_ratio_ids,
        aspect_ratio_mask=inputs.aspect_ratio_mask,
        cross_attention_mask=inputs.cross_attention_mask,
        max_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )


def test_generate_with_fusion_differs_from_the_base_model(make_model, scoring_batch) -> None:
    model = make_model(alpha=1.0).eval()
    inputs = Classifier(model).generation_inputs(scoring_batch)
    with torch.no_grad():
        fused, plain = _generate(model, inputs), _base_generate(model, inputs)
    assert fused.sequences.shape == (2, inputs.input_ids.shape[1] + 6)
    assert (fused.scores[0] - plain.scores[0]).abs().max() > 1e-3


def test_generate_at_alpha_zero_equals_the_base_model(make_model, scoring_batch) -> None:
    model = make_model(alpha=0.0).eval()
    inputs = Classifier(model).generation_inputs(scoring_batch)
    with torch.no_grad():
        fused, plain = _generate(model, inputs), _base_generate(model, inputs)
    assert torch.equal(fused.sequences, plain.sequences)
    assert all(torch.equal(x, y) for x, y in zip(fused.scores, plain.scores, strict=True))


def test_fusion_agrees_with_and_without_the_kv_cache(make_model, scoring_batch) -> None:
    model = make_model(alpha=1.0).eval()
    inputs = Classifier(model).generation_inputs(scoring_batch)
    cached = _generate(model, inputs, use_cache=True)
    uncached = _generate(model, inputs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for x, y in zip(cached.scores, uncached.scores, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-4)
