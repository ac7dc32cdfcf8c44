"""Training: losses per component, gradients, FiLM at initialisation, freezing, parameter groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdf_model import ABLATIONS, COMPONENTS, Classifier, MDFModel, ModelInputs

# Backward passes through a ResNet50 are the slow part: train at a 64 px U-Net input.
SMALL = {"unet_input_size": 64, "patch_pool": 1}


def vessel_mask(image: np.ndarray) -> np.ndarray:
    """The dark vessel pixels of a synthetic fundus image."""
    return ((image[..., 0] < 150) & (image[..., 0] > 60)).astype(np.uint8)


def training_batch(model: MDFModel, images: list[np.ndarray]) -> ModelInputs:
    classifier = Classifier(model)
    batch = [
        classifier.prepare(images[0], "age 40.", seg_target=vessel_mask(images[0])),
        classifier.prepare(images[1]),  # no reference mask, no clinical text
    ]
    return classifier.training_inputs(batch, ["inherited", "acquired"])


def test_forward_reports_each_loss(make_model, fundus_images) -> None:
    model = make_model(**SMALL, alpha=0.5, seg_loss_weight=0.5).train()
    out = model(training_batch(model, fundus_images))
    assert out.lm_loss is not None and out.seg_loss is not None
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.seg_loss)
    assert out.seg_logits.shape == (2, 2, 64, 64)
    assert out.logits.shape[0] == 2 and out.logits.shape[2] == 512  # one row per image


def test_answer_loss_is_the_score_of_the_target_answer(make_model, fundus_images) -> None:
    model = make_model(**SMALL, alpha=0.5).eval()
    inputs = training_batch(model, fundus_images)
    with torch.no_grad():
        loss = model(inputs).lm_loss
        scores, _ = model.score(inputs)
    answer_tokens = int((inputs.lm_labels != -100).sum())
    torch.testing.assert_close(loss, -scores.sum() / answer_tokens)


def test_segmentation_loss_counts_only_channels_with_a_reference(make_model, fundus_images) -> None:
    model = make_model(**SMALL).train()
    inputs = training_batch(model, fundus_images)
    assert inputs.seg_valid.tolist() == [[True, False], [False, False]]
    out = model(inputs)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        out.seg_logits[0, 0], inputs.seg_targets[0, 0]
    )
    torch.testing.assert_close(out.seg_loss, expected)
    inputs.seg_targets = inputs.seg_valid = None
    assert model(inputs).seg_loss is None


def test_gradients_reach_every_component(make_model, fundus_images) -> None:
    model = make_model(**SMALL, alpha=0.5).train()
    model(training_batch(model, fundus_images)).loss.backward()
    probes = {
        "unet encoder": model.unet.net.encoder.conv1.weight,
        "unet decoder": model.unet.net.segmentation_head[0].weight,
        "projection": model.projection.proj[0].weight,
        "level embedding": model.projection.level_embedding,
        "fusion attention": model.fusion.blocks["5"].attn.k_proj.weight,
        "alpha": model.fusion.blocks["1"].alpha,
        "film": model.film.heads[0].weight,
        "vision tower": model.base.model.vision_model.patch_embedding.weight,
        "language model": model.base.model.language_model.layers[0].mlp.up_proj.weight,
        "lm head": model.base.lm_head.weight,
    }
    for name, parameter in probes.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_film_is_the_identity_at_initialisation(make_model, fundus_images) -> None:
    model = make_model(**SMALL, alpha=0.5).eval()
    skips = [torch.randn(2, c, 8, 8) for c in model.unet.skip_channels]
    pooled = torch.randn(2, model.config.hidden_size)
    for before, after in zip(skips, model.film(pooled, skips), strict=True):
        assert torch.equal(before, after)
    # The whole segmentation path equals smp's own U-Net forward.
    inputs = training_batch(model, fundus_images)
    pixels = inputs.unet_pixels.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(model(inputs).seg_logits, model.unet.net(pixels))
        model.film.heads[0].bias.fill_(0.1)
        assert not torch.equal(model(inputs).seg_logits, model.unet.net(pixels))


def _component_of(key: str) -> str:
    return key.split(".")[0]


@pytest.mark.parametrize("ablation", ["fusion_only", "frozen_unet", "frozen_vision_tower"])
def test_frozen_parameters_do_not_move_in_an_optimizer_step(
    make_model, fundus_images, ablation: str
) -> None:
    model = make_model(**SMALL, alpha=0.5, frozen=ABLATIONS[ablation]).train()
    frozen = model.frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(training_batch(model, fundus_images)).loss.backward()
    optimizer.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}

    vision = "base.model.vision_model."
    for key in before:
        if "unet" in frozen and key.startswith("unet."):
            assert key not in moved, key  # weights and batch-norm statistics
        if "mllm" in frozen and key.startswith("base."):
            assert key not in moved, key
        if "vision_tower" in frozen and key.startswith(vision):
            assert key not in moved, key
    assert any(k.startswith("fusion.") for k in moved)
    assert any(k.startswith("film.") for k in moved)
    if "mllm" not in frozen:
        assert any(k.startswith("base.") and not k.startswith(vision) for k in moved)


def test_parameter_groups_follow_the_frozen_components(make_model) -> None:
    model = make_model(**SMALL, frozen=ABLATIONS["frozen_unet"])
    groups = model.parameter_groups({"fusion": 1e-3, "default": 1e-5})
    assert [g["name"] for g in groups] == ["fusion", "film", "mllm"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-5, 1e-5]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    with pytest.raises(ValueError, match="no learning rate"):
        model.parameter_groups({"fusion": 1e-3})
    with pytest.raises(ValueError, match="unknown parameter groups"):
        model.parameter_groups({"decoder": 1e-3})


def test_set_frozen_replaces_the_frozen_set(make_model) -> None:
    model = make_model(**SMALL)
    model.set_frozen(["mllm"])
    assert not any(p.requires_grad for p in model.component_parameters("mllm"))
    model.set_frozen(["vision_tower"])
    assert not any(p.requires_grad for p in model.component_parameters("vision_tower"))
    assert all(p.requires_grad for p in model.base.lm_head.parameters())
    assert set(COMPONENTS) >= model.frozen == {"vision_tower"}
    with pytest.raises(ValueError, match="unknown components"):
        model.set_frozen(["encoder"])


def test_gradient_checkpointing_gives_the_same_gradients(make_model, fundus_images) -> None:
    grads = []
    for checkpointing in (False, True):
        model = make_model(**SMALL, alpha=0.5).train()
        if checkpointing:
            model.base.activation_checkpointing_enable()
        model(training_batch(model, fundus_images)).loss.backward()
        grads.append([p.grad for p in model.fusion.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)
