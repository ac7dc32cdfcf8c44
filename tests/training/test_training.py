"""Training on the tiny preset: early stopping, best weights kept, freezing, a whole run
recorded and promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from structlog.testing import capture_logs

from db.models import ModelVersion, Promotion, TrainingRun
from mdf.settings import Settings
from training.config import EarlyStopping, TrainConfig, VesselStage
from training.memory import estimate
from training.run import STATE_FILE, load_for_training, train_and_evaluate
from training.trainer import BestWeights, ComponentWatch, Trainer, learning_rate_factor


def test_a_component_stops_after_patience_epochs_without_improvement() -> None:
    watch = ComponentWatch("seg_loss")
    rule = EarlyStopping(patience=2, min_delta=0.01)
    losses = [1.0, 0.8, 0.795, 0.81, 0.7]
    stopped = [watch.update(epoch, loss, rule) for epoch, loss in enumerate(losses, start=1)]
    assert stopped == [False, False, False, True, False]  # epoch 4: 2 epochs past best (2)
    assert (watch.best_epoch, watch.stopped_at) == (2, 4)


def test_no_component_stops_before_min_epochs() -> None:
    # The answer loss sits at chance for some epochs before the image starts to count.
    watch = ComponentWatch("lm_loss")
    rule = EarlyStopping(patience=1, min_delta=0.01, min_epochs=4)
    stopped = [watch.update(epoch, 0.35, rule) for epoch in range(1, 6)]
    assert stopped == [False, False, False, True, False]


def test_best_weights_copy_only_the_named_tensors_and_put_them_back() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    best = BestWeights(model, {"head": ["0.weight", "1.running_mean"]})
    assert not best.restore("head")  # nothing remembered yet
    best.remember(["head"])
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(1)
    assert best.restore("head")
    after = model.state_dict()
    assert torch.equal(after["0.weight"], kept["0.weight"])
    assert torch.equal(after["1.running_mean"], kept["1.running_mean"])
    assert torch.equal(after["0.bias"], kept["0.bias"] + 1)  # not named: left as it is


#: Scripted validation: the answer loss is best at epoch 2, the segmentation loss at epoch 1.
WORSE_AFTER_BEST = [
    {"lm_loss": 1.0, "seg_loss": 1.0},
    {"lm_loss": 0.5, "seg_loss": 2.0},
    {"lm_loss": 0.9, "seg_loss": 3.0},
    {"lm_loss": 0.95, "seg_loss": 3.5},
]
ANSWER_PARTS = ("base.", "projection.", "fusion.", "film.")
#: These tests are about the joint loop; the vessel stage before it has test_vessels.py.
JOINT_ONLY = VesselStage(steps=0)


def _training_set(classifier, n: int = 4) -> tuple[list, list[str]]:
    from mdf.synthetic.fundus import generate_case

    cases = [generate_case(seed, size=96) for seed in range(n)]
    inputs = [
        classifier.prepare(case.image, case.clinical_text, seg_target=case.vessel_mask)
        for case in cases
    ]
    return inputs, [case.label for case in cases]


def _scripted(trainer: Trainer, losses: list[dict[str, float]]) -> list[dict[str, torch.Tensor]]:
    """Replace validation by ``losses`` in turn; the list returned fills with the weights each
    epoch was judged on."""
    judged: list[dict[str, torch.Tensor]] = []

    def validate(inputs, targets) -> dict[str, float]:
        judged.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return losses[len(judged) - 1]

    trainer.validate = validate  # type: ignore[method-assign]
    return judged


def _same(model, state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> bool:
    return all(
        torch.equal(tensor, state[name])
        for name, tensor in model.state_dict().items()
        if name.startswith(prefixes)
    )


@pytest.mark.parametrize("patience", [1, 10], ids=["components_stopped", "none_stopped"])
def test_training_ends_with_the_weights_validated_at_the_best_answer_loss(
    tiny_checkpoint: Path, patience: int
) -> None:
    config = TrainConfig(
        epochs=3,
        batch_size=4,
        early_stopping=EarlyStopping(patience=patience),
        vessels=JOINT_ONLY,
    )
    classifier = load_for_training(tiny_checkpoint, config)
    inputs, targets = _training_set(classifier)
    trainer = Trainer(classifier, config)
    judged = _scripted(trainer, WORSE_AFTER_BEST)

    history = trainer.fit(inputs, targets, inputs, targets)

    model, trained = trainer.model, ("unet.", *ANSWER_PARTS)
    assert history.restored_epoch == 2
    assert _same(model, judged[1], trained)
    assert not _same(model, judged[2], ANSWER_PARTS) and not _same(model, judged[0], ("unet.",))
    if patience == 1:  # the U-Net stopped after epoch 2, so epoch 3 ran on its best: epoch 1
        assert history.stopped["unet"] == 2
        unet = [k for k in judged[0] if k.startswith("unet.")]
        assert all(torch.equal(judged[2][k], judged[0][k]) for k in unet)


def test_a_resumed_fit_still_ends_with_the_best_weights_from_before_the_break(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.safetensors"
    config = TrainConfig(
        epochs=2, batch_size=4, early_stopping=EarlyStopping(patience=10), vessels=JOINT_ONLY
    )
    classifier = load_for_training(tiny_checkpoint, config)
    inputs, targets = _training_set(classifier)
    first = Trainer(classifier, config)
    judged = _scripted(first, WORSE_AFTER_BEST[1:])  # the answer loss is best at epoch 1
    first.fit(inputs, targets, inputs, targets, state=state)

    longer = config.model_copy(update={"epochs": 3})
    resumed = Trainer(load_for_training(tiny_checkpoint, longer), longer)
    after_break = _scripted(resumed, WORSE_AFTER_BEST[3:])
    with capture_logs() as logs:
        history = resumed.fit(inputs, targets, inputs, targets, state=state)
    (resumed_line,) = [line for line in logs if line["event"] == "training_resumed"]
    assert resumed_line["state"] == f"{tmp_path.name}/state.safetensors"  # no directory

    assert history.epochs == 3 and len(after_break) == 1  # only epoch 3 ran again
    assert history.restored_epoch == 1
    assert _same(resumed.model, judged[0], ("unet.", *ANSWER_PARTS))
    assert not _same(resumed.model, after_break[0], ANSWER_PARTS)


def test_cosine_learning_rates_decay_from_the_configured_ones(tiny_checkpoint: Path) -> None:
    assert learning_rate_factor(1, 4, "cosine") == 1.0
    assert learning_rate_factor(3, 4, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(4, 4, "constant") == 1.0
    config = TrainConfig(
        epochs=3, batch_size=4, early_stopping=EarlyStopping(patience=10), vessels=JOINT_ONLY
    )
    trainer = Trainer(load_for_training(tiny_checkpoint, config), config)
    inputs, targets = _training_set(trainer.classifier)
    rates: list[list[float]] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        rates.append([group["lr"] for group in trainer.optimizer.param_groups])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    trainer.fit(inputs, targets, inputs, targets)
    assert rates[0] == trainer.base_rates  # one step per epoch: 4 images, batches of 4
    for epoch, used in enumerate(rates, start=1):
        expected = [b * learning_rate_factor(epoch, 3, "cosine") for b in trainer.base_rates]
        assert used == pytest.approx(expected)
    assert rates[-1][0] < rates[0][0] / 2


def test_cross_attention_strategy_trains_only_the_base_cross_attention(
    tiny_checkpoint: Path,
) -> None:
    classifier = load_for_training(tiny_checkpoint, TrainConfig(strategy="cross_attention"))
    model = classifier.model
    layers = model.base.model.language_model.layers
    cross = set(model.base.config.text_config.cross_attention_layers)
    for index, layer in enumerate(layers):
        trainable = {p.requires_grad for p in layer.parameters()}
        assert trainable == {index in cross}, index
    assert not any(p.requires_grad for p in model.base.model.vision_model.parameters())
    assert all(p.requires_grad for p in model.component_parameters("unet"))


def test_dry_run_estimate_for_the_11b_preset() -> None:
    full = estimate(TrainConfig())
    partial = estimate(TrainConfig(strategy="cross_attention"))
    assert 10.5e9 < full.total_parameters < 11.2e9
    assert full.total_gib > 80 > partial.total_gib  # full AdamW cannot fit one 80 GB GPU
    assert partial.trainable_parameters["mllm"] < full.trainable_parameters["mllm"] / 4


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the model's part is slow
def test_a_training_run_is_recorded_and_the_first_challenger_promoted(
    labelled_night: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        checkpoint=tiny_checkpoint,
        output_dir=tmp_path / "runs",
        epochs=2,
        batch_size=8,
        variant="frozen_unet",
    )
    before = {
        k: v.clone()
        for k, v in load_for_training(tiny_checkpoint, config).model.unet.state_dict().items()
    }

    result = train_and_evaluate(config, labelled_night)

    assert result.promoted and "no champion" in result.reason
    assert set(result.metrics) == {"random_patient", "image_only", "referral"}
    # the referral threshold was set on the validation patients to catch 90% of them
    chosen = result.metrics["referral"]["validation"]["inherited"]
    assert chosen["sensitivity"] >= 0.9 and chosen["positives"] > 0
    assert 0 <= chosen["threshold"] <= 1
    assert set(result.metrics["referral"]["random_patient"]) == {"inherited"}
    report = json.loads(result.report.read_text())
    assert report["data"]["labelled_images"] == 24
    assert len(report["history"]["train"]) == 2
    for plot in ("losses.png", "confusion.png", "roc.png"):
        assert (result.report.parent / plot).stat().st_size > 1000

    from db.session import session_factory
    from mdf_model import load_classifier

    with session_factory(labelled_night.resolved_database_url)() as session:
        run = session.scalar(select(TrainingRun))
        version = session.scalar(select(ModelVersion).where(ModelVersion.is_promoted))
        assert run.status == "finished" and run.promoted and run.challenger_version_id == version.id
        assert session.scalar(select(Promotion.training_run_id)) == run.id
        assert version.referral == {"target_sensitivity": 0.9, "labels": {"inherited": chosen}}
    trained = load_classifier(version.path)
    assert trained.version_hash == version.manifest_sha256
    after = trained.model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen U-Net is unchanged
    lm_before = load_for_training(tiny_checkpoint, config).model.base.lm_head.weight
    assert not torch.equal(lm_before, trained.model.base.lm_head.weight)  # the MLLM trained


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_resumes_from_its_last_saved_epoch(
    labelled_night: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    base = {"checkpoint": tiny_checkpoint, "output_dir": tmp_path / "runs", "batch_size": 8}
    base |= {"image_only_eval": False}
    first = train_and_evaluate(TrainConfig(epochs=1, **base), labelled_night)
    first_history = json.loads(first.report.read_text())["history"]
    assert (first.report.parent / STATE_FILE).is_file()

    resumed = train_and_evaluate(
        TrainConfig(epochs=2, resume_run=first.run_id, **base), labelled_night
    )
    history = json.loads(resumed.report.read_text())["history"]
    assert history["epochs"] == 2 and len(history["train"]) == 2
    assert history["train"][0] == first_history["train"][0]  # epoch 1 was not run again
    with pytest.raises(ValueError, match="cannot resume run 99"):
        train_and_evaluate(TrainConfig(epochs=2, resume_run=99, **base), labelled_night)


def test_the_baseline_variant_is_the_plain_mllm_behind_the_same_api(tiny_checkpoint: Path) -> None:
    from mdf.synthetic.fundus import generate_case

    classifier = load_for_training(tiny_checkpoint, TrainConfig(variant="baseline"))
    model = classifier.model
    assert model.unet is None and model.fusion is None and model.film is None
    case = generate_case(0, size=96)
    prepared = classifier.prepare(case.image, case.clinical_text)
    inputs = classifier.training_inputs([prepared], [case.label])
    output = model(inputs)
    assert output.seg_loss is None and output.lm_loss is not None
    result = classifier.classify_prepared([prepared], generate_text=False)[0]
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.mask.size == 0
