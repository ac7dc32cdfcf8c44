"""How much GPU memory fine-tuning the 11B preset needs under each strategy.

The model is built on the meta device (shapes, no memory). Mixed-precision AdamW
keeps, per trainable parameter, a bf16 gradient (2 bytes), an fp32 master copy
(4) and two fp32 moments (8): 14 bytes on top of the 2-byte bf16 weight that
every parameter has. Activations are not included: they depend on batch size,
tiles and sequence length, so the verdict keeps 10 GiB of an 80 GB GPU for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.config import TrainConfig
from training.trainer import apply_strategy

GIB = 1024**3
WEIGHT_BYTES = 2  # bf16
TRAINABLE_EXTRA_BYTES = 2 + 4 + 8  # bf16 gradient, fp32 master weight, fp32 Adam moments
PRESET = "llama-3.2-11b-vision"


@dataclass(frozen=True)
class MemoryEstimate:
    preset: str
    variant: str
    strategy: str
    total_parameters: int
    trainable_parameters: dict[str, int]
    weights_gib: float
    training_state_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.training_state_gib


def estimate(config: TrainConfig) -> MemoryEstimate:
    from mdf_model import ABLATIONS, MDFConfig, MDFModel

    mdf_config = MDFConfig.from_preset(PRESET)
    if config.variant == "baseline":
        mdf_config = mdf_config.replace(baseline=True)
    model = MDFModel.from_config(mdf_config, device="meta")
    if config.variant != "baseline":
        model.set_frozen(ABLATIONS[config.variant])
    apply_strategy(model, config.strategy)
    trainable = {
        group["name"]: sum(p.numel() for p in group["params"])
        for group in model.parameter_groups({"default": 1.0})
    }
    total = sum(p.numel() for p in model.parameters())
    return MemoryEstimate(
        preset=PRESET,
        variant=config.variant,
        strategy=config.strategy,
        total_parameters=total,
        trainable_parameters=trainable,
        weights_gib=total * WEIGHT_BYTES / GIB,
        training_state_gib=sum(trainable.values()) * TRAINABLE_EXTRA_BYTES / GIB,
    )


def format_estimate(result: MemoryEstimate) -> str:
    lines = [
        f"{result.preset}, variant {result.variant}, strategy {result.strategy}",
        f"  parameters: {result.total_parameters / 1e9:.2f} B",
    ]
    for name, count in result.trainable_parameters.items():
        lines.append(f"  trainable {name:<8} {count / 1e6:>10.1f} M")
    lines += [
        f"  bf16 weights:                        {result.weights_gib:6.1f} GiB",
        f"  gradients + AdamW state (trainable): {result.training_state_gib:6.1f} GiB",
        f"  total before activations:            {result.total_gib:6.1f} GiB",
        "  fits one 80 GB GPU (10 GiB left for activations)"
        if result.total_gib < 70
        else "  does NOT fit one 80 GB GPU",
        f"gpu_memory_gib: {result.total_gib:.1f}",
    ]
    return "\n".join(lines)
