"""How much GPU memory fine-tuning the 11B preset needs under each strategy, on one GPU or
per GPU when FSDP shards it over several.

The model is built on the meta device (shapes, no memory), with the strategy applied as
training applies it (LoRA adapters included). Mixed-precision AdamW keeps, per trainable
parameter, a bf16 gradient (2 bytes), an fp32 master copy (4) and two fp32 moments (8): 14
bytes on top of the 2-byte bf16 weight that every parameter has. Activations are not
included: they depend on batch size, tiles and sequence length, so the verdict keeps 10 GiB
of an 80 GB GPU for them.

FSDP keeps 1/N of all of that on each of N GPUs, and gathers whole units while they run:
the root unit (everything outside the shard units of distributed.py: U-Net, fusion, FiLM,
norms) for the whole forward and backward, and a decoder layer at a time, the next one
prefetched, with its gradient before it is reduced.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training import lora
from training.config import TrainConfig
from training.distributed import shard_units
from training.trainer import apply_strategy

GIB = 1024**3
WEIGHT_BYTES = 2  # bf16
GRADIENT_BYTES = 2  # bf16
TRAINABLE_EXTRA_BYTES = GRADIENT_BYTES + 4 + 8  # gradient, fp32 master weight, fp32 moments
PRESET = "llama-3.2-11b-vision"
GPU_GIB = 80.0
ACTIVATIONS_GIB = 10.0
GATHERED_LAYERS = 2  # the running unit and the prefetched next one


@dataclass(frozen=True)
class MemoryEstimate:
    preset: str
    variant: str
    strategy: str
    total_parameters: int
    trainable_parameters: dict[str, int]
    weights_gib: float
    training_state_gib: float
    gpus: int = 1
    gathered_gib: float = 0.0  # FSDP: units unsharded at a time, on top of the shards

    @property
    def total_gib(self) -> float:
        """Before activations: on the one GPU, or on each of ``gpus``."""
        return (self.weights_gib + self.training_state_gib) / self.gpus + self.gathered_gib


def _unit_bytes(module: nn.Module, skip: frozenset[int] = frozenset()) -> int:
    """Memory of a unit gathered whole: its weights, and the gradients of what trains."""
    return sum(
        p.numel() * (WEIGHT_BYTES + (GRADIENT_BYTES if p.requires_grad else 0))
        for p in module.parameters()
        if id(p) not in skip
    )


def _gathered_bytes(model: nn.Module) -> int:
    units = shard_units(model)
    inside = frozenset(id(p) for unit in units for p in unit.parameters())
    root = _unit_bytes(model, skip=inside)
    return root + GATHERED_LAYERS * max(_unit_bytes(unit) for unit in units)


def estimate(config: TrainConfig, gpus: int = 1) -> MemoryEstimate:
    """The estimate for ``config`` on one GPU, or per GPU with FSDP over ``gpus``."""
    from mdf_model import ABLATIONS, MDFConfig, MDFModel

    mdf_config = MDFConfig.from_preset(PRESET)
    if config.variant == "baseline":
        mdf_config = mdf_config.replace(baseline=True)
    model = MDFModel.from_config(mdf_config, device="meta")
    if config.variant != "baseline":
        model.set_frozen(ABLATIONS[config.variant])
    apply_strategy(model, config.strategy)
    if config.strategy == "lora":
        lora.attach(model, config.lora)
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
        gpus=gpus,
        gathered_gib=_gathered_bytes(model) / GIB if gpus > 1 else 0.0,
    )


def format_estimate(result: MemoryEstimate) -> str:
    where = "one GPU" if result.gpus == 1 else f"each of {result.gpus} GPUs (FSDP)"
    lines = [
        f"{result.preset}, variant {result.variant}, strategy {result.strategy}",
        f"  parameters: {result.total_parameters / 1e9:.2f} B",
    ]
    for name, count in result.trainable_parameters.items():
        lines.append(f"  trainable {name:<8} {count / 1e6:>10.1f} M")
    lines += [
        f"  bf16 weights:                        {result.weights_gib:6.1f} GiB",
        f"  gradients + AdamW state (trainable): {result.training_state_gib:6.1f} GiB",
    ]
    if result.gpus > 1:
        shards = (result.weights_gib + result.training_state_gib) / result.gpus
        lines += [
            f"  sharded over {result.gpus} GPUs, each holds:     {shards:6.1f} GiB",
            f"  gathered units (root + 2 layers):    {result.gathered_gib:6.1f} GiB",
        ]
    budget = GPU_GIB - ACTIVATIONS_GIB
    fits = result.total_gib < budget
    lines += [
        f"  total on {where} before activations: {result.total_gib:.1f} GiB",
        f"  fits {'each' if result.gpus > 1 else 'one'} 80 GB GPU "
        f"({ACTIVATIONS_GIB:.0f} GiB left for activations)"
        if fits
        else f"  does NOT fit {'each' if result.gpus > 1 else 'one'} 80 GB GPU",
        f"gpu_memory_gib: {result.total_gib:.1f}",
    ]
    return "\n".join(lines)
