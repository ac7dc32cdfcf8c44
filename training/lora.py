"""LoRA adapters on the MLLM's language model, through peft, merged before anything is saved.

The 11B model's language model is what does not fit one GPU when fully fine-tuned; LoRA
trains a low-rank update of chosen projections instead, while the U-Net, fusion and FiLM
(small, and new to the model) train fully. peft injects the adapters in place into the
text decoder, so the fusion hooks on its layers and every state-dict name outside it stay
as they are. Merging (peft's ``merge_and_unload``) folds each update into its projection's
weight and puts the plain ``nn.Linear`` back: the model that is saved and served is an
ordinary MDF model in the ordinary checkpoint format, and workers never import peft.
"""

from __future__ import annotations

from peft import LoraConfig, LoraModel
from torch import nn

from training.config import LoraSettings

__all__ = ["ADAPTER_MARK", "attach", "is_adapter"]

#: The part of every adapter tensor's name that peft gives it (``...q_proj.lora_A.default``).
ADAPTER_MARK = ".lora_"


def is_adapter(name: str) -> bool:
    """Whether a parameter name (as in ``named_parameters``) is a LoRA adapter's."""
    return ADAPTER_MARK in name


def attach(model: nn.Module, settings: LoraSettings) -> LoraModel:
    """Inject adapters into ``model.base``'s language model and make them trainable (the
    rest of the language model is frozen by peft; the caller freezes the rest of the MLLM).
    Returns peft's handle, whose ``merge_and_unload()`` folds them back in."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    return LoraModel(model.base.model.language_model, config, "default")
