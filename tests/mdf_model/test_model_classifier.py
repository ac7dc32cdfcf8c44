"""The inference API: label scoring, generated text, masks, input validation, baseline mode."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from mdf_model import ClassificationResult, Classifier, PreparedInput
from mdf_model.unet import FundusUNet

MULTICLASS = (
    "normal",
    "diabetic retinopathy",
    "glaucoma",
    "AMD",
    "retinitis pigmentosa",
    "Stargardt disease",
    "Best disease",
)


def check_result(result: ClassificationResult, labels: list[str]) -> None:
    assert list(result.probabilities) == labels
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.text_label is None or result.text_label in labels
    assert result.agrees == (result.text_label == result.label)


def test_binary_classification(classifier: Classifier, prepared: list[PreparedInput]) -> None:
    results = classifier.classify_prepared(prepared, max_new_tokens=8)
    assert len(results) == 3
    for result in results:
        check_result(result, ["acquired", "inherited"])
        assert isinstance(result.text, str) and result.text
        assert result.mask.shape == (2, 128, 128) and result.mask.dtype == np.uint8
    assert classifier.mask_channels == ["vessels", "lesions"]  # the mask's planes, in order
    # Different images, different answers: the image reaches the scores.
    assert len({r.probabilities["acquired"] for r in results}) == 3


def test_every_image_gets_a_label_when_the_text_names_none(
    classifier: Classifier, prepared: list[PreparedInput]
) -> None:
    # The random tiny model writes gibberish: the paper's "None" failure, on every image.
    results = classifier.classify_prepared(prepared, max_new_tokens=8)
    assert all(r.text_label is None for r in results)
    assert all(r.label in classifier.labels and not r.agrees for r in results)


def test_multiclass_labels_are_a_configuration_change(make_model, fundus_images) -> None:
    classifier = Classifier(make_model(labels=MULTICLASS))
    results = classifier.classify(fundus_images[:2], generate_text=False)
    for result in results:
        check_result(result, list(MULTICLASS))
        assert result.text == "" and result.text_label is None


def test_label_scores_match_teacher_forced_logits(
    classifier: Classifier, prepared: list[PreparedInput]
) -> None:
    """Scores computed independently from the full logits of a training-style forward."""
    model, labels = classifier.model, classifier.labels
    log_likelihood = torch.zeros(len(prepared), len(labels))
    with torch.no_grad():
        for j, label in enumerate(labels):
            inputs = classifier.training_inputs(prepared, [label] * len(prepared))
            log_probs = torch.log_softmax(model(inputs).logits[:, :-1].float(), -1)
            targets = inputs.lm_labels[:, 1:]
            answer = targets != -100
            picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            log_likelihood[:, j] = (picked * answer).sum(-1)
    expected = torch.softmax(log_likelihood, -1)
    results = classifier.classify_prepared(prepared, generate_text=False)
    actual = torch.tensor([[r.probabilities[label] for label in labels] for r in results])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_label_scoring_is_one_forward_pass_per_batch(
    classifier: Classifier, prepared: list[PreparedInput]
) -> None:
    model = classifier.model
    parts = {
        "vision tower": model.base.model.vision_model,
        "u-net encoder": model.unet.net.encoder.conv1,
        "text decoder": model.base.model.language_model,
    }
    calls: Counter[str] = Counter()
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: calls.update([name]))
        for name, module in parts.items()
    ]
    try:
        classifier.classify_prepared(prepared, generate_text=False)
        assert calls == dict.fromkeys(parts, 1)
        calls.clear()
        classifier.classify_prepared(prepared, max_new_tokens=5)
    finally:
        for handle in handles:
            handle.remove()
    # Scoring once, then one batched generate() continuing from the scoring pass: five cached
    # decoding steps for five tokens (the first reads the last prompt token). The images are
    # encoded once for both.
    assert calls == {"vision tower": 1, "u-net encoder": 1, "text decoder": 1 + 1 + 4}


def test_scoring_without_masks_skips_their_work_and_keeps_the_scores(
    classifier: Classifier, prepared: list[PreparedInput]
) -> None:
    unet = classifier.model.unet.net
    calls: Counter[str] = Counter()
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: calls.update([name]))
        for name, module in {
            "bottleneck": unet.encoder.layer4,
            "decoder": unet.decoder,
            "film": classifier.model.film,
        }.items()
    ]
    try:
        full = classifier.classify_prepared(prepared, generate_text=False)
        assert calls == {"bottleneck": 1, "decoder": 1, "film": 1}
        calls.clear()
        labels_only = classifier.classify_prepared(prepared, generate_text=False, segment=False)
        assert not calls
    finally:
        for handle in handles:
            handle.remove()
    for a, b in zip(full, labels_only, strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
        assert a.mask.shape[0] > 0 and b.mask.shape == (0, 0, 0)


def test_the_staged_encoder_is_smps_encoder() -> None:
    unet = FundusUNet(classes=2, decoder_channels=(32, 16, 16, 8, 8), skip_levels=(1, 2, 3, 4))
    pixels = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = unet.net.eval().encoder(pixels)
        staged = unet.encode(pixels)
        short = unet.encode(pixels, for_decoder=False)
    assert len(staged) == len(expected) == 6 and len(short) == 5
    for ours, smp_feature in zip(staged, expected, strict=True):
        assert torch.equal(ours, smp_feature)
    for ours, smp_feature in zip(short, expected, strict=False):
        assert torch.equal(ours, smp_feature)
    # The stages add no parameters of their own.
    assert set(unet.state_dict()) == {f"net.{key}" for key in unet.net.state_dict()}


def test_batching_does_not_change_results(
    classifier: Classifier, prepared: list[PreparedInput]
) -> None:
    together = classifier.classify_prepared(prepared, max_new_tokens=6)
    for item, batched in zip(prepared, together, strict=True):
        (alone,) = classifier.classify_prepared([item], max_new_tokens=6)
        for label in classifier.labels:
            assert alone.probabilities[label] == pytest.approx(
                batched.probabilities[label], abs=1e-5
            )
        assert alone.text == batched.text
        assert np.abs(alone.mask.astype(int) - batched.mask.astype(int)).max() <= 1


def test_clinical_text_is_optional_and_reaches_the_prompt(
    classifier: Classifier, fundus_images
) -> None:
    without = classifier.prepare(fundus_images[0])
    with_text = classifier.prepare(fundus_images[0], "age 67, history of glaucoma.")
    assert len(with_text.prompt_ids) > len(without.prompt_ids)
    a, b = classifier.classify_prepared([without, with_text], generate_text=False)
    assert a.probabilities != b.probabilities


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((64, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((64, 64), dtype=np.uint8), r"\(H, W, 3\)"),
        (np.zeros((64, 64, 4), dtype=np.uint8), r"\(H, W, 3\)"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "at least 32"),
        (np.zeros((10, 500, 3), dtype=np.uint8), "at least 32"),
        ([[0, 0, 0]], "numpy array"),
        (np.zeros((64, 64, 3), dtype=np.uint8), "blank"),
        (np.full((64, 64, 3), 128, dtype=np.uint8), "blank"),
    ],
)
def test_unusable_images_are_refused_with_a_reason(
    classifier: Classifier, image: object, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        classifier.prepare(image)  # type: ignore[arg-type]


def test_classify_keeps_the_training_mode(make_model, fundus_images) -> None:
    model = make_model().train()
    Classifier(model).classify(fundus_images[:1], generate_text=False)
    assert model.training and model.unet.training


def test_baseline_mode_works_through_the_same_api(make_model, fundus_images) -> None:
    model = make_model(baseline=True)
    assert model.unet is None and model.fusion is None and model.film is None
    classifier = Classifier(model)
    results = classifier.classify(fundus_images, batch_size=2, max_new_tokens=4)
    assert len(results) == 3
    for result in results:
        check_result(result, ["acquired", "inherited"])
        assert result.mask.shape == (0, 0, 0)
    # No fusion at all: the logits are the base model's.
    inputs = classifier.scoring_inputs([classifier.prepare(fundus_images[0])])
    rows = inputs.rows_per_image
    with torch.no_grad():
        plain = model.base(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            pixel_values=inputs.pixel_values.repeat_interleave(rows, 0),
            aspect_ratio_ids=inputs.aspect_ratio_ids.repeat_interleave(rows, 0),
            aspect_ratio_mask=inputs.aspect_ratio_mask.repeat_interleave(rows, 0),
            cross_attention_mask=inputs.cross_attention_mask,
        ).logits
        assert torch.equal(model(inputs).logits, plain)
