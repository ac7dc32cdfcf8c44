"""LoRA through peft on the tiny preset: what trains, that it learns, and that the merged
checkpoint is an ordinary one that gives the adapter model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdf.synthetic.fundus import generate_case
from mdf_model import MDFConfig, MDFModel, load_classifier
from mdf_model.tiny import build_tiny_base
from tests.in_process import mdf_command
from training.config import EarlyStopping, LoraSettings, TrainConfig, VesselStage
from training.lora import is_adapter
from training.run import load_for_training
from training.trainer import Trainer

FULLY_TRAINED = ("unet.", "projection.", "fusion.", "film.")
CONFIG = TrainConfig(
    strategy="lora",
    lora=LoraSettings(rank=4, alpha=8),
    epochs=4,
    batch_size=4,
    lr_schedule="constant",
    early_stopping=EarlyStopping(patience=100),
    vessels=VesselStage(steps=0),  # the adapters are what is tested
)


@pytest.fixture(scope="module")
def referring_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint that refers to its base directory instead of copying it, as one
    built from the released weights with the MLLM frozen does: a LoRA run changes that
    base, so its checkpoint must carry the merged weights."""
    root = tmp_path_factory.mktemp("lora")
    config = MDFConfig.from_preset("tiny", frozen=("mllm",))
    base = build_tiny_base(root / "base", extra_text=config.labels)
    MDFModel.from_base(base, config, seed=0).save_pretrained(root / "checkpoint")
    assert not (root / "checkpoint" / "base").exists()
    return root / "checkpoint"


def _cases(classifier, n: int) -> tuple[list, list[str]]:
    cases = [generate_case(seed, size=96) for seed in range(n)]
    inputs = [
        classifier.prepare(case.image, case.clinical_text, seg_target=case.vessel_mask)
        for case in cases
    ]
    return inputs, [case.label for case in cases]


def test_only_the_adapters_and_the_unet_fusion_and_film_train(tiny_checkpoint: Path) -> None:
    trainer = Trainer(load_for_training(tiny_checkpoint, CONFIG), CONFIG)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    adapters = {name for name in trainable if is_adapter(name)}
    assert adapters and all(".language_model." in name for name in adapters)
    assert trainable - adapters == {
        name for name, _ in trainer.model.named_parameters() if name.startswith(FULLY_TRAINED)
    }
    rank = {p.shape for name, p in trainer.model.named_parameters() if "lora_A" in name}
    assert {shape[0] for shape in rank} == {4}
    groups = {group["name"] for group in trainer.optimizer.param_groups}
    assert groups == {"unet", "fusion", "film", "mllm"}  # the adapters take the MLLM's rate


def test_lora_learns_and_the_merged_checkpoint_gives_the_adapter_models_logits(
    referring_checkpoint: Path, tmp_path: Path
) -> None:
    classifier = load_for_training(referring_checkpoint, CONFIG)
    inputs, targets = _cases(classifier, 8)
    probe = classifier.training_inputs(inputs[:2], targets[:2])
    trainer = Trainer(classifier, CONFIG)
    validate, logits = trainer.validate, []

    def recording(val_inputs, val_targets) -> dict[str, float]:
        # The adapter model as each epoch leaves it, before anything is merged.
        trainer.model.eval()
        with torch.no_grad():
            logits.append(trainer.model(probe).logits.clone())
        return validate(val_inputs, val_targets)

    trainer.validate = recording  # type: ignore[method-assign]
    history = trainer.fit(inputs, targets, inputs[:4], targets[:4])

    assert history.train[-1]["loss"] < 0.9 * history.train[0]["loss"]
    assert history.validation[-1]["lm_loss"] < history.validation[0]["lm_loss"]
    classifier.save(tmp_path / "merged")
    assert (tmp_path / "merged" / "base").is_dir()  # the changed base travels with it
    merged = load_classifier(tmp_path / "merged")  # the verified format, no peft
    assert not any(is_adapter(name) for name, _ in merged.model.named_parameters())
    with torch.no_grad():
        served = merged.model(probe).logits
    adapted = logits[history.restored_epoch - 1]
    assert torch.allclose(served, adapted, atol=1e-4, rtol=1e-4)
    untrained = load_classifier(referring_checkpoint).model
    assert not torch.allclose(untrained(probe).logits, adapted, atol=1e-2)


def test_dry_run_prints_lora_memory_for_the_11b_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lora.yaml"
    config.write_text("strategy: lora\nlora: {rank: 16, alpha: 32}\n")
    with mdf_command(capsys) as mdf:
        code, out, _ = mdf("train", "--dry-run", "--config", str(config))
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines() if line.startswith("gpu_"))
    assert "strategy lora" in out
    adapters = next(line for line in out.splitlines() if "trainable mllm" in line)
    assert 10 < float(adapters.split()[-2]) < 30  # M: rank-16 adapters on q, k, v, o
    assert 20 < float(lines["gpu_memory_gib"]) < 70  # the bf16 weights, and it fits
