"""The MDF-MLLM model: Mllama + ResNet50 U-Net, fused in both directions.

Data flow of one forward pass (``rows`` text rows over ``images`` images)::

    unet_pixels -> U-Net encoder -> 4 skips -> SkipProjection -> U-Net tokens ----.
    pixel_values -> Mllama vision tower -> image states ---------------------.    |
    input_ids -> Mllama text decoder (image states in its cross-attention  <-'    |
                 layers; U-Net tokens in the fusion layers, via hooks)     <------'
              -> hidden states -> lm_head -> logits (answer loss / label scores)
              -> pooled prompt state -> FiLM(skips) -> U-Net decoder -> seg logits

The vision tower and the U-Net run once per image; their outputs are shared by the image's rows.
Label scoring packs an image's prompt and all its label answers into one row (see
`mdf_model.inputs.collate`), so the prompt, the image's cross-attention keys and values and the
fusion's U-Net keys and values are computed once per image too. `MDFModel.score_and_generate`
continues text generation from that pass, so the text costs its decoding steps only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DynamicCache,
    GenerationConfig,
    MllamaForConditionalGeneration,
    ProcessorMixin,
)

from mdf_model import pretrained, tiles
from mdf_model.configuration import COMPONENTS, MDFConfig
from mdf_model.film import SkipFiLM
from mdf_model.fusion import MultiDepthFusion
from mdf_model.inputs import IGNORE_INDEX, ModelInputs
from mdf_model.projection import SkipProjection
from mdf_model.unet import FundusUNet

__all__ = ["MDFModel", "MDFOutput"]

# Groups for per-component learning rates ("vision_tower" is part of "mllm").
PARAMETER_GROUPS = ("unet", "fusion", "film", "mllm")


@dataclass
class MDFOutput:
    """``loss`` = ``lm_loss`` + seg_loss_weight * ``seg_loss`` over the parts that exist.

    ``lm_loss``: mean cross-entropy over answer tokens (None without ``lm_labels``);
    ``seg_loss``: mean per-pixel BCE over the (image, channel) pairs that have a reference mask
    (None without any); ``logits`` (rows, L, vocab); ``seg_logits`` (images, C, N, N), None in
    baseline mode.
    """

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    seg_loss: torch.Tensor | None
    logits: torch.Tensor
    seg_logits: torch.Tensor | None


class MDFModel(nn.Module):
    """MDF-MLLM. ``base`` keeps its own module tree and state_dict keys; the U-Net branch,
    projection, fusion and FiLM sit beside it (all None in baseline mode)."""

    def __init__(
        self,
        config: MDFConfig,
        base: MllamaForConditionalGeneration,
        processor: ProcessorMixin | None = None,
        *,
        base_reference: Path | None = None,
        encoder_weights: Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config.with_base_architecture(base.config)
        if processor is not None and tiles.processor_tiles(processor) != config.vision_tiles:
            raise ValueError(
                f"the processor fits a photograph onto {tiles.processor_tiles(processor)} tiles, "
                f"the configuration's vision_tiles is {config.vision_tiles}"
            )
        tiles.enable(base.model.vision_model)
        self.base = base
        self.processor = processor
        # The directory the unchanged base weights come from; a checkpoint may refer to it
        # instead of copying them.
        self.base_reference = base_reference
        self.version_hash: str | None = None
        self.unet: FundusUNet | None = None
        self.projection: SkipProjection | None = None
        self.fusion: MultiDepthFusion | None = None
        self.film: SkipFiLM | None = None
        if not config.baseline:
            hidden = base.config.text_config.hidden_size
            self.unet = FundusUNet(
                classes=len(config.seg_classes),
                decoder_channels=config.unet_decoder_channels,
                skip_levels=config.skip_levels,
                encoder=config.unet_encoder,
                encoder_weights=encoder_weights,
            )
            self.projection = SkipProjection(
                self.unet.skip_channels, hidden, grid=config.patch_grid, pool=config.patch_pool
            )
            self.fusion = MultiDepthFusion(
                base.config.text_config,
                config.fusion_layers,
                alpha=config.alpha,
                learnable=config.alpha_learnable,
            )
            self.fusion.attach(
                base.model.language_model.layers, init_from_base=config.fusion_init_from_base
            )
            self.film = SkipFiLM(hidden, self.unet.skip_channels)
        self._frozen: frozenset[str] = frozenset()
        self.set_frozen(config.frozen)

    # ---------------------------------------------------------------- building and loading
    @classmethod
    def from_config(
        cls,
        config: MDFConfig,
        *,
        device: str | torch.device = "meta",
        dtype: torch.dtype = torch.float32,
    ) -> MDFModel:
        """Build without weights: random initialisation (on the meta device: no memory at all).
        Parameters are created in ``dtype`` directly, so an 11B model in bfloat16 never
        needs float32 memory."""
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return cls(config, MllamaForConditionalGeneration(config.mllama_config()))
        finally:
            torch.set_default_dtype(default_dtype)

    # Loading and saving directories (pretrained.py): transformers' method names, bound here.
    from_base = classmethod(pretrained.from_base)
    from_pretrained = classmethod(pretrained.from_pretrained)
    save_pretrained = pretrained.save_pretrained

    # ---------------------------------------------------------------- freezing and groups
    def _component_modules(self, name: str) -> list[nn.Module]:
        modules = {
            "unet": [self.unet],
            "fusion": [self.projection, self.fusion],
            "film": [self.film],
            "mllm": [self.base],
            "vision_tower": [self.base.model.vision_model],
        }[name]
        return [m for m in modules if m is not None]

    def component_parameters(self, name: str) -> list[nn.Parameter]:
        """All parameters of one component (see COMPONENTS), trainable or not."""
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}; valid are {list(COMPONENTS)}")
        return [p for m in self._component_modules(name) for p in m.parameters()]

    @property
    def frozen(self) -> frozenset[str]:
        return self._frozen

    def set_frozen(self, components: Iterable[str]) -> None:
        """Freeze exactly these components and make everything else trainable.

        A frozen U-Net or fusion also stays in eval mode: its batch-norm statistics do not move.
        See ABLATIONS for the paper's settings.
        """
        components = frozenset(components)
        unknown = sorted(components - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; valid are {list(COMPONENTS)}")
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        for name in components:
            for parameter in self.component_parameters(name):
                parameter.requires_grad_(False)
        self._frozen = components
        self.train(self.training)

    def train(self, mode: bool = True) -> MDFModel:
        super().train(mode)
        if self.unet is not None and "unet" in self._frozen:
            self.unet.eval()
        if self.projection is not None and "fusion" in self._frozen:
            self.projection.eval()  # its standardisation statistics stay as they are too
        return self

    def parameter_groups(self, learning_rates: Mapping[str, float]) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the trainable parameters, one per component in
        ("unet", "fusion", "film", "mllm"), each with its rate from ``learning_rates`` (or its
        "default" entry). Components with nothing to train are left out."""
        unknown = sorted(set(learning_rates) - {*PARAMETER_GROUPS, "default"})
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; valid are {PARAMETER_GROUPS}")
        groups = []
        for name in PARAMETER_GROUPS:
            params = [p for p in self.component_parameters(name) if p.requires_grad]
            if not params:
                continue
            if name not in learning_rates and "default" not in learning_rates:
                raise ValueError(f"no learning rate for trainable component {name!r}")
            rate = learning_rates.get(name, learning_rates.get("default"))
            groups.append({"name": name, "params": params, "lr": rate})
        return groups

    def parameter_counts(self) -> dict[str, int]:
        def count(modules: list[nn.Module]) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        vision = count(self._component_modules("vision_tower"))
        base = count([self.base])
        return {
            "total": count([self]),
            "base": base,
            "vision_tower": vision,
            "language_model": base - vision,
            "unet": count(self._component_modules("unet")),
            "fusion": count(self._component_modules("fusion")),
            "film": count(self._component_modules("film")),
        }

    # ---------------------------------------------------------------- forward passes
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_tiles(self, inputs: ModelInputs) -> None:
        if inputs.pixel_values.shape[2] != self.config.vision_tiles:
            raise ValueError(
                f"inputs of {inputs.pixel_values.shape[2]} tiles for a model of vision_tiles "
                f"{self.config.vision_tiles} (prepared with another processor?)"
            )

    def _image_states(self, inputs: ModelInputs) -> torch.Tensor:
        """Vision tower + projector once per image -> (images, tiles * patches, hidden)."""
        self._check_tiles(inputs)
        outputs = self.base.model.vision_model(
            pixel_values=inputs.pixel_values,
            aspect_ratio_ids=inputs.aspect_ratio_ids,
            aspect_ratio_mask=inputs.aspect_ratio_mask,
        )
        states = self.base.model.multi_modal_projector(outputs.last_hidden_state)
        return states.reshape(states.shape[0], -1, states.shape[-1])

    def _unet_tokens(
        self, inputs: ModelInputs, *, for_decoder: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        if inputs.unet_pixels is None:
            raise ValueError("this model needs unet_pixels (prepared without a U-Net image?)")
        pixels = inputs.unet_pixels.to(next(self.unet.parameters()).dtype)
        features = self.unet.encode(pixels, for_decoder=for_decoder)
        skips = self.unet.skips(features)
        return features, skips, self.projection(skips)

    def _fused(self, tokens: torch.Tensor | None) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if tokens is None else self.fusion.using(tokens)

    def _attention_mask(self, inputs: ModelInputs) -> torch.Tensor:
        """The 2D padding mask, or a packed layout's own mask in the additive 4D form that
        transformers passes through unchanged and every attention implementation reads."""
        if inputs.packed_mask is None:
            return inputs.attention_mask
        dtype = self.base.dtype
        additive = torch.zeros(inputs.packed_mask.shape, dtype=dtype, device=self.device)
        return additive.masked_fill(~inputs.packed_mask, torch.finfo(dtype).min)[:, None]

    def _run(
        self, inputs: ModelInputs, *, segment: bool = True, cache: DynamicCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Hidden states (rows, L, hidden), segmentation logits (images, C, N, N), or None for
        a baseline model or when ``segment`` is False (no FiLM, no decoder), and the U-Net
        tokens (None for a baseline model). With ``cache``, the keys and values of every
        layer are kept in it."""
        per_image = inputs.rows_per_image
        image_states = self._image_states(inputs).repeat_interleave(per_image, dim=0)
        features = skips = tokens = None
        if self.unet is not None:
            features, skips, tokens = self._unet_tokens(inputs, for_decoder=segment)
        with self._fused(tokens):
            hidden = self.base.model(
                input_ids=inputs.input_ids,
                attention_mask=self._attention_mask(inputs),
                position_ids=inputs.position_ids,
                cross_attention_states=image_states,
                cross_attention_mask=inputs.cross_attention_mask,
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state
        if self.unet is None or not segment:
            return hidden, None, tokens
        # The prompt part of an image's rows is the same in each row (causal attention).
        prompt = inputs.prompt_mask[::per_image, :, None].to(hidden.dtype)
        pooled = (hidden[::per_image] * prompt).sum(1) / prompt.sum(1).clamp(min=1)
        return hidden, self.unet.decode(features, self.film(pooled, skips)), tokens

    def forward(self, inputs: ModelInputs) -> MDFOutput:
        """Teacher-forced forward for training: logits, answer loss and segmentation loss."""
        hidden, seg_logits, _ = self._run(inputs)
        logits = self.base.lm_head(hidden)
        lm_loss = None
        if inputs.lm_labels is not None:
            lm_loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                inputs.lm_labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
            )
        seg_loss = self._seg_loss(seg_logits, inputs)
        parts = [lm_loss] if lm_loss is not None else []
        if seg_loss is not None:
            parts.append(self.config.seg_loss_weight * seg_loss)
        return MDFOutput(
            loss=sum(parts) if parts else None,
            lm_loss=lm_loss,
            seg_loss=seg_loss,
            logits=logits,
            seg_logits=seg_logits,
        )

    @staticmethod
    def _seg_loss(seg_logits: torch.Tensor | None, inputs: ModelInputs) -> torch.Tensor | None:
        if seg_logits is None or inputs.seg_targets is None or not inputs.seg_valid.any():
            return None
        per_map = F.binary_cross_entropy_with_logits(
            seg_logits.float(), inputs.seg_targets.float(), reduction="none"
        ).mean(dim=(2, 3))
        return per_map[inputs.seg_valid].mean()

    def score(
        self, inputs: ModelInputs, *, segment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probability of every answer, (rows * answers per row,) in row then answer order,
        from one forward pass, and the segmentation logits (None with ``segment=False``, which
        skips FiLM, the U-Net decoder and its bottleneck stage; the scores are the same).

        An answer's first token is predicted from the last prompt token, each later one from
        the token before it: in a packed row several answers share that prompt token. Only
        those positions go through lm_head, each once, so scoring many labels does not
        materialise a (rows, L, vocab) tensor."""
        if inputs.lm_labels is None or inputs.answer_segments is None:
            raise ValueError("score() needs rows with answers (lm_labels)")
        hidden, seg_logits, _ = self._run(inputs, segment=segment)
        return self._answer_scores(inputs, hidden), seg_logits

    def _answer_scores(self, inputs: ModelInputs, hidden: torch.Tensor) -> torch.Tensor:
        segments = inputs.answer_segments
        row, position = (inputs.lm_labels != IGNORE_INDEX).nonzero(as_tuple=True)
        segment_of = segments[row, position]
        length = segments.shape[1]
        last_prompt = length - 1 - inputs.prompt_mask.flip(-1).int().argmax(-1)
        first = segment_of != segments[row, position - 1]
        source = torch.where(first, last_prompt[row], position - 1)
        predictors, index = torch.unique(row * length + source, return_inverse=True)
        log_probs = torch.log_softmax(
            self.base.lm_head(hidden.flatten(0, 1)[predictors]).float(), -1
        )
        token_scores = log_probs[index, inputs.lm_labels[row, position]]
        answers = int(segments.amax())
        scores = torch.zeros(segments.shape[0] * answers, device=token_scores.device)
        return scores.index_add(0, row * answers + segment_of - 1, token_scores)

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.base.generation_config.eos_token_id,
            pad_token_id=self.base.config.text_config.pad_token_id,
        )

    @torch.no_grad()
    def generate(self, inputs: ModelInputs, *, max_new_tokens: int = 16, **kwargs: Any) -> Any:
        """Greedy ``generate()`` of the base model with fusion on; returns what it returns
        (prompt + new tokens, or a dict with ``return_dict_in_generate=True``)."""
        self._check_tiles(inputs)
        tokens = None
        if self.unet is not None:
            tokens = self._unet_tokens(inputs, for_decoder=False)[2]
        with self._fused(tokens):
            return self.base.generate(
                input_ids=inputs.input_ids,
                attention_mask=inputs.attention_mask,
                pixel_values=inputs.pixel_values,
                aspect_ratio_ids=inputs.aspect_ratio_ids,
                aspect_ratio_mask=inputs.aspect_ratio_mask,
                cross_attention_mask=inputs.cross_attention_mask,
                generation_config=self._generation_config(max_new_tokens),
                **kwargs,
            )

    @torch.no_grad()
    def score_and_generate(
        self,
        scoring: ModelInputs,
        prompts: ModelInputs,
        *,
        segment: bool = True,
        max_new_tokens: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`score` and `generate` from one pass over each image: the generated text continues
        from the packed scoring rows' prompt keys and values, with their image states and
        U-Net tokens, so the vision tower, the U-Net encoder and the prompt run once per image
        for both. ``scoring`` is packed (one row per image); ``prompts`` the same studies
        without answers (`Classifier.generation_inputs`). Returns the scores and segmentation
        logits as `score` does and the generated sequences as `generate` does.

        Every packed row holds the same answers, so with left padding each prompt ends where
        the answers start and ``prompts`` is the first columns of ``scoring``. The cache keeps
        the prompt but its last token, from which ``generate()`` continues; the cross-attention
        layers keep their image keys and values."""
        if scoring.rows_per_image != 1 or scoring.answer_segments is None:
            raise ValueError("score_and_generate() needs packed scoring rows, one per image")
        prompt_length = prompts.input_ids.shape[1]
        if not torch.equal(scoring.input_ids[:, :prompt_length], prompts.input_ids):
            raise ValueError("prompts are not the prompts of the scoring rows")
        cache = DynamicCache(config=self.base.config)
        hidden, seg_logits, tokens = self._run(scoring, segment=segment, cache=cache)
        scores = self._answer_scores(scoring, hidden)
        cross = set(self.config.cross_attention_layers)
        remove = scoring.input_ids.shape[1] - prompt_length + 1
        for index, layer in enumerate(cache.layers):
            if index not in cross:
                layer.crop(-remove)
        with self._fused(tokens):
            sequences = self.base.generate(
                input_ids=prompts.input_ids,
                attention_mask=prompts.attention_mask,
                cross_attention_mask=prompts.cross_attention_mask,
                past_key_values=cache,
                generation_config=self._generation_config(max_new_tokens),
            )
        return scores, seg_logits, sequences
