"""A training run's configuration: one typed file (YAML or JSON), validated up front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

VARIANTS = ("full", "frozen_unet", "frozen_mllm", "frozen_vision_tower", "fusion_only", "baseline")
STRATEGIES = ("full", "cross_attention", "lora", "frozen_mllm")
DISTRIBUTED = ("none", "fsdp")


class EarlyStopping(BaseModel):
    """Per-component early stopping: a component whose validation loss has not improved
    by ``min_delta`` for ``patience`` epochs is frozen while the others train on.

    No component stops before ``min_epochs``: a model that learns the answer from scratch sits
    for some epochs on the plateau of the label prior (the answer loss at chance) before the
    image starts to count, and stopping there freezes it at chance.
    """

    model_config = ConfigDict(extra="forbid")
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=1e-3, ge=0)
    min_epochs: int = Field(default=0, ge=0)


class LoraSettings(BaseModel):
    """LoRA adapters on the language model (``strategy: lora``), through peft.

    ``target_modules`` are matched against the ends of module names in the text decoder:
    the default adapts the query, key, value and output projections of its self- and
    cross-attention layers (Mllama names both ``q_proj`` ... ``o_proj``); add ``gate_proj``,
    ``up_proj`` and ``down_proj`` for the MLPs.
    """

    model_config = ConfigDict(extra="forbid")
    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0, description="updates are scaled by alpha / rank")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class VesselStage(BaseModel):
    """The U-Net's own segmentation stage before the joint loop, on patches of the training
    images that have reference masks (training/vessels.py says why); it runs whenever some
    have one. ``steps: 0`` leaves it out. ``bf16`` autocasts it on any device: on one thread
    of an AMD EPYC (AVX-512 BF16) a step took 1.05 CPU seconds against 1.77 in float32."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(
        default=1000, ge=0, description="a minute or two on a GPU; 0 under distributed: fsdp"
    )
    patch: int = Field(default=128, ge=32, description="side of the square patches")
    batch: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    bf16: bool = True


class Augmentation(BaseModel):
    """Random flips of each training image in the joint loop (augment.py), off unless asked
    for: on the CPU's short runs of the tiny preset they slowed learning and did not raise
    held-out accuracy. The vessel stage has its own patches, turns and colour jitter."""

    model_config = ConfigDict(extra="forbid")
    horizontal_flip: bool = False
    vertical_flip: bool = False


class PromotionRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["accuracy", "macro_f1", "auroc"] = "accuracy"
    margin: float = Field(default=0.01, ge=0)
    max_recall_drop: float = Field(default=0.05, ge=0)
    auto_promote: bool = True


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = Field(
        default=None, description="start from this checkpoint; default: the promoted version"
    )
    output_dir: Path | None = Field(
        default=None, description="where checkpoints and reports go; default: data dir/training"
    )
    variant: Literal[VARIANTS] = "full"  # type: ignore[valid-type]
    strategy: Literal[STRATEGIES] = Field(  # type: ignore[valid-type]
        default="full",
        description="what of the MLLM trains: all of it, its cross-attention layers, LoRA "
        "adapters on its language model, or nothing",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    distributed: Literal[DISTRIBUTED] = Field(  # type: ignore[valid-type]
        default="none",
        description="fsdp: shard a full fine-tune over the processes torchrun starts "
        "(mdf train --nproc N)",
    )
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accumulation: int = Field(default=1, ge=1)
    learning_rates: dict[str, float] = Field(
        default_factory=lambda: {"unet": 3e-4, "fusion": 1e-3, "film": 1e-3, "mllm": 1e-3}
    )
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine",
        description="each epoch's learning rates: as given, or decayed along a half cosine",
    )
    seg_loss_weight: float | None = Field(default=None, description="default: the model's")
    vessels: VesselStage = Field(default_factory=VesselStage)
    augment: Augmentation = Field(default_factory=Augmentation)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    eval_fraction: float = Field(default=0.25, gt=0, lt=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    held_out_source: str | None = Field(
        default=None, description="also report a split that holds this source out whole"
    )
    image_only_eval: bool = Field(default=True, description="also evaluate without clinical text")
    resume_run: int | None = Field(
        default=None,
        description="continue the training of this run id from its last saved epoch",
    )
    max_images: int | None = Field(default=None, ge=1)
    seed: int = 0
    device: str | None = Field(default=None, description="default: MDF_DEVICE")
    bf16: bool = Field(default=True, description="bf16 autocast on CUDA devices")
    promotion: PromotionRule = Field(default_factory=PromotionRule)

    @model_validator(mode="before")
    @classmethod
    def _no_vessel_stage_under_fsdp(cls, data: Any) -> Any:
        """The vessel stage runs in one process, so a sharded run leaves it out unless the
        configuration asks for it (which ``_check`` refuses)."""
        if isinstance(data, dict) and data.get("distributed") == "fsdp":
            vessels = data.get("vessels")
            if isinstance(vessels, VesselStage):
                vessels = vessels.model_dump(exclude_unset=True)
            if vessels is None or (isinstance(vessels, dict) and "steps" not in vessels):
                data = data | {"vessels": (vessels or {}) | {"steps": 0}}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        unknown = set(self.learning_rates) - {"unet", "fusion", "film", "mllm", "default"}
        if unknown:
            raise ValueError(f"learning_rates: unknown components {sorted(unknown)}")
        if self.distributed == "fsdp" and self.strategy != "full":
            raise ValueError(
                f"distributed: fsdp shards a full fine-tune (strategy: full), not {self.strategy}; "
                "LoRA and the partial strategies fit one GPU"
            )
        if self.distributed == "fsdp" and self.vessels.steps:
            raise ValueError(
                "vessels: the U-Net's segmentation stage runs in one process; "
                "set vessels.steps to 0 with distributed: fsdp"
            )
        return self

    def replaced(self, **changes: Any) -> TrainConfig:
        """This configuration with ``changes``, validated again (``model_copy`` is not);
        the defaults it did not set are derived again (a sharded run's vessel stage)."""
        return TrainConfig.model_validate(self.model_dump(exclude_unset=True) | changes)

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.model_validate(data or {})
