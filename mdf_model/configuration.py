"""Typed configuration of an MDF-MLLM model, its presets and its validation.

One `MDFConfig` describes everything that is not a weight: the base Mllama architecture (used to
build the model without a weight directory, e.g. on the meta device), the U-Net branch, the
fusion and FiLM wiring, the labels and the prompt. The two presets differ only in values.
This module imports neither torch nor transformers at load time: ``mdf_model.cli`` reads the
presets while registering its commands.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import MllamaConfig

__all__ = [
    "ABLATIONS",
    "COMPONENTS",
    "UNET_ENCODERS",
    "MDFConfig",
    "check_fusion_layers",
]

# The U-Net encoders a configuration may name: smp's ResNets, whose skip levels line up.
UNET_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")

# Parts of the model that can be frozen or given their own learning rate. "vision_tower" is the
# Mllama vision encoder, a subset of "mllm"; the others are disjoint.
COMPONENTS: tuple[str, ...] = ("unet", "fusion", "film", "mllm", "vision_tower")

# The paper's ablations as sets of frozen components. "fusion_only" trains the fusion interface
# in both directions (skip projection, scaled cross-attention, FiLM) and nothing else.
ABLATIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "full": (),
        "frozen_unet": ("unet",),
        "frozen_mllm": ("mllm",),
        "frozen_vision_tower": ("vision_tower",),
        "fusion_only": ("unet", "mllm"),
    }
)

_PROMPT_FIELDS = frozenset({"clinical", "labels"})
_MLLAMA_MAX_TILES = 4  # MllamaVisionConfig's max_num_tiles default

# The architecture fields an MDFConfig records about its base model (``base_config``).
_BASE_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_global_layers",
    "attention_heads",
    "image_size",
    "patch_size",
    "max_num_tiles",
    "intermediate_layers_indices",
    "vision_output_dim",
    "supported_aspect_ratios",
)
_BASE_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "cross_attention_layers",
    "rope_parameters",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def check_fusion_layers(
    fusion_layers: Sequence[int], cross_attention_layers: Sequence[int]
) -> None:
    """Raise a ValueError unless every fusion layer is a cross-attention layer of the base model.

    Fusion reuses the place where Mllama already mixes image tokens into the text stream (and the
    row masking that comes with it), so only those layers qualify.
    """
    valid = sorted(cross_attention_layers)
    invalid = sorted(set(fusion_layers) - set(valid))
    if invalid:
        raise ValueError(
            f"fusion layers {invalid} are not cross-attention layers of the base model; "
            f"valid fusion layers are {valid}"
        )


def _base_slots(base_config: Mapping[str, Any]) -> Any:
    """The tile slots the base's vision tower was built for (``max_num_tiles``)."""
    vision = base_config.get("vision_config") if isinstance(base_config, Mapping) else None
    if not isinstance(vision, Mapping):
        return _MLLAMA_MAX_TILES
    return vision.get("max_num_tiles", _MLLAMA_MAX_TILES)


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass(frozen=True)
class MDFConfig:
    """Configuration of an MDF-MLLM model. Build one with `MDFConfig.from_preset(name, **changes)`.

    Attributes:
        preset: name of the preset this configuration started from (informational).
        base_config: Mllama architecture as `MllamaConfig` keyword arguments (``vision_config``,
            ``text_config``, ``image_token_index``). Used to build without weights; when weights
            are loaded from a directory, its ``config.json`` is authoritative and this field is
            overwritten with its architecture.
        labels: answer labels; the classifier scores exactly these.
        vision_tiles: the tile slots the vision tower computes for a photograph, at most the
            base's ``max_num_tiles``: the processor fits a photograph onto a canvas of at most
            this many tiles. The released Llama 3.2 Vision computes all four slots, padding
            included, and its patches attend to the padding tiles; a square photograph uses one.
            Fewer slots change the output, so a model is trained and served with one value,
            which its checkpoint records (see tiles.py). A configuration written before the
            field existed means all the base's slots, what such a model computed.
        fusion_layers: text decoder layers that receive the U-Net tokens; each must be one of the
            base model's cross-attention layers.
        alpha: scale of the fused cross-attention output (initial value when learnable).
            0 makes the model equal to the base model, but every fusion gradient (projection,
            attention, the U-Net's share of the answer loss) is a multiple of alpha, so at 0
            nothing upstream learns and a learnable alpha only drifts (within +-0.007 after 40
            steps of the tiny preset). The default opens the path from the first step.
        alpha_learnable: a learnable per-layer scale (True) or a fixed constant (False).
        fusion_init_from_base: initialise each fusion attention from the base layer's own
            cross-attention weights (True) or randomly (False).
        unet_input_size: side of the square U-Net input; the mask comes back at this size.
        unet_decoder_channels: smp U-Net decoder widths (five, deepest first).
        unet_encoder: the U-Net's ResNet encoder (one of UNET_ENCODERS): the paper's ResNet50,
            or a shallower one where compute is scarce (the tiny preset: on a CPU the ResNet50
            encoder took about 80% of a training step's time).
        unet_encoder_weights: optional local file with ImageNet weights of that encoder; None
            means random initialisation. Only read when a model is first built.
        skip_levels: indices of the smp encoder features used as the four skip levels.
        patch_grid: each skip level is cut into patch_grid x patch_grid patches (tokens per level).
        patch_pool: each patch is average-pooled to patch_pool x patch_pool cells before projection.
        seg_classes: names of the segmentation channels (independent sigmoid channels).
        seg_loss_weight: weight of the segmentation loss in the total loss.
        prompt_template: prompt text with ``{clinical}`` and ``{labels}`` placeholders. It must
            contain the ``<|image|>`` token.
        clinical_template: how non-empty clinical text fills ``{clinical}`` (placeholder
            ``{text}``).
        answer_template: the answer the model is trained to give and that label scoring scores,
            with a ``{label}`` placeholder; it ends with the end-of-answer token.
        max_clinical_chars: clinical text is cut to this many characters.
        frozen: components (see COMPONENTS) whose parameters are frozen when the model is built.
        baseline: the plain MLLM (no U-Net, no fusion, no FiLM) behind the same API.
    """

    preset: str
    base_config: dict[str, Any]
    labels: tuple[str, ...] = ("acquired", "inherited")
    vision_tiles: int = 1
    fusion_layers: tuple[int, ...] = ()
    alpha: float = 0.5
    alpha_learnable: bool = True
    fusion_init_from_base: bool = True
    unet_input_size: int = 512
    unet_decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    unet_encoder: str = "resnet50"
    unet_encoder_weights: str | None = None
    skip_levels: tuple[int, ...] = (1, 2, 3, 4)
    patch_grid: int = 8
    patch_pool: int = 2
    seg_classes: tuple[str, ...] = ("vessels", "lesions")
    seg_loss_weight: float = 1.0
    prompt_template: str = (
        "<|image|>{clinical}Question: is the disease in this fundus photograph {labels}? Answer:"
    )
    clinical_template: str = "Clinical notes: {text}\n"
    answer_template: str = " {label}<|end_of_text|>"
    max_clinical_chars: int = 2000
    frozen: tuple[str, ...] = ()
    baseline: bool = False

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so a config cannot change under a model.
        for name in (
            "labels",
            "fusion_layers",
            "unet_decoder_channels",
            "skip_levels",
            "seg_classes",
            "frozen",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "base_config", copy.deepcopy(dict(self.base_config)))
        self.validate()

    # ----------------------------------------------------------------------------------------
    @property
    def text_config(self) -> dict[str, Any]:
        return self.base_config["text_config"]

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.base_config["vision_config"]

    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        return tuple(self.text_config["cross_attention_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    def mllama_config(self) -> MllamaConfig:
        """The base model's Mllama configuration, as recorded in ``base_config``."""
        from transformers import MllamaConfig  # imports torch: see the module docstring

        return MllamaConfig(**self.base_config)

    def with_base_architecture(self, base: MllamaConfig) -> MDFConfig:
        """This configuration with ``base_config`` taken from a loaded base model's own
        configuration, which is authoritative over the recorded one."""
        return self.replace(
            base_config={
                "vision_config": {k: getattr(base.vision_config, k) for k in _BASE_VISION_FIELDS},
                "text_config": {k: getattr(base.text_config, k) for k in _BASE_TEXT_FIELDS},
                "image_token_index": base.image_token_index,
            }
        )

    def validate(self) -> None:
        """Raise a ValueError naming the offending field if the configuration cannot work."""
        for key in ("vision_config", "text_config"):
            if not isinstance(self.base_config.get(key), dict):
                raise ValueError(f"base_config must contain a {key!r} dictionary")
        if "cross_attention_layers" not in self.text_config:
            raise ValueError("base_config.text_config must list cross_attention_layers")

        if len(self.labels) < 2:
            raise ValueError(f"labels: need at least two labels, got {list(self.labels)}")
        if any(not isinstance(label, str) or not label.strip() for label in self.labels):
            raise ValueError(f"labels must be non-empty strings, got {list(self.labels)}")
        folded = [label.strip().casefold() for label in self.labels]
        if len(set(folded)) != len(folded):
            raise ValueError(f"labels must be distinct (ignoring case), got {list(self.labels)}")

        most = _base_slots(self.base_config)
        tiles = self.vision_tiles
        if isinstance(tiles, bool) or not isinstance(tiles, int) or not 1 <= tiles <= most:
            raise ValueError(
                f"vision_tiles must be an integer from 1 to the base's max_num_tiles ({most}), "
                f"got {self.vision_tiles!r}"
            )
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha}")
        unknown = sorted(set(self.frozen) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"frozen: unknown components {unknown}; valid are {list(COMPONENTS)}")

        self._validate_prompt()
        if self.baseline:
            absent = sorted(set(self.frozen) & {"unet", "fusion", "film"})
            if absent:
                raise ValueError(f"frozen: baseline models have no {absent}")
            return
        self._validate_unet()
        if not self.fusion_layers:
            raise ValueError("fusion_layers: need at least one layer (or set baseline=True)")
        if sorted(set(self.fusion_layers)) != list(self.fusion_layers):
            raise ValueError(
                f"fusion_layers must be ascending and distinct, got {list(self.fusion_layers)}"
            )
        check_fusion_layers(self.fusion_layers, self.cross_attention_layers)

    def _validate_prompt(self) -> None:
        fields = _template_fields(self.prompt_template)
        if not fields <= _PROMPT_FIELDS:
            raise ValueError(
                f"prompt_template: unknown placeholders {sorted(fields - _PROMPT_FIELDS)}; "
                f"allowed are {sorted(_PROMPT_FIELDS)}"
            )
        if "{clinical}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the {clinical} placeholder")
        if self.prompt_template.count("<|image|>") != 1:
            raise ValueError("prompt_template must contain the <|image|> token exactly once")
        if _template_fields(self.clinical_template) != {"text"}:
            raise ValueError("clinical_template must contain exactly the {text} placeholder")
        if _template_fields(self.answer_template) != {"label"}:
            raise ValueError("answer_template must contain exactly the {label} placeholder")
        if self.max_clinical_chars < 0:
            raise ValueError("max_clinical_chars must be >= 0")

    def _validate_unet(self) -> None:
        size = self.unet_input_size
        if size < 64 or size % 32:
            raise ValueError(f"unet_input_size must be a multiple of 32 and >= 64, got {size}")
        if len(self.unet_decoder_channels) != 5 or min(self.unet_decoder_channels) < 1:
            raise ValueError("unet_decoder_channels must be five positive widths")
        levels = list(self.skip_levels)
        if len(levels) != 4 or levels != sorted(set(levels)) or not set(levels) <= {1, 2, 3, 4, 5}:
            raise ValueError(
                f"skip_levels must be four ascending encoder feature indices in 1..5, got {levels}"
            )
        if self.patch_grid < 1 or self.patch_pool < 1:
            raise ValueError("patch_grid and patch_pool must be >= 1")
        smallest_side = size // 2 ** max(levels)
        if self.patch_grid * self.patch_pool > smallest_side:
            raise ValueError(
                f"patch_grid * patch_pool = {self.patch_grid * self.patch_pool} exceeds the side "
                f"of the deepest skip level ({smallest_side} at unet_input_size {size})"
            )
        if self.unet_encoder not in UNET_ENCODERS:
            raise ValueError(
                f"unet_encoder must be one of {list(UNET_ENCODERS)}, got {self.unet_encoder!r}"
            )
        if not self.seg_classes or len(set(self.seg_classes)) != len(self.seg_classes):
            raise ValueError("seg_classes must be distinct and not empty")
        if self.seg_loss_weight < 0:
            raise ValueError("seg_loss_weight must be >= 0")

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> MDFConfig:
        """A preset with some fields changed; raises a ValueError naming the valid presets."""
        from mdf_model.presets import PRESETS  # the presets are MDFConfig instances

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **changes)

    def replace(self, **changes: Any) -> MDFConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MDFConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown configuration fields {unknown}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"missing configuration fields {missing}")
        if "vision_tiles" not in data:
            # Written before the field existed: the tower computed all the base's slots, and
            # the processor fitted a photograph onto as many tiles (Mllama's 4).
            data = {**data, "vision_tiles": _base_slots(data["base_config"])}
        return cls(**data)

    def to_json_file(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: Path) -> MDFConfig:
        return cls.from_dict(json.loads(path.read_text()))
