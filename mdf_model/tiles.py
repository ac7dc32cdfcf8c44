"""The vision tower on fewer tile slots than the base model was built for (``vision_tiles``).

Llama 3.2 Vision's processor fits a photograph onto a canvas of up to ``max_num_tiles`` (4)
tiles of 560 px and pads the canvas to all four slots; the vision tower computes every slot, and
its attention mask lets real patches attend to the padding tiles. A square fundus photograph
uses one tile, so three quarters of the tower's work is padding. With ``vision_tiles`` = k the
processor fits the photograph onto at most k tiles and the tower computes k slots.

The tower's tile embeddings hold, per canvas shape, one entry for each of the base's slots, and
the aspect-ratio ids that select them count the canvases of ``max_num_tiles`` tiles. With k
slots the ids count the canvases of k tiles (as the k-tile processor numbers them), and a canvas
of k or fewer tiles occupies the first k slots. `enable` lets the embeddings take any k: ids are
mapped to the base's numbering and the slots are cut to the first k. Weights, their names and
shapes stay the base model's, and k = ``max_num_tiles`` computes exactly what the released model
does.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import ProcessorMixin
from transformers.models.mllama.image_processing_mllama import get_all_supported_aspect_ratios
from transformers.models.mllama.modeling_mllama import (
    MllamaPrecomputedAspectRatioEmbedding,
    MllamaPrecomputedPositionEmbedding,
    MllamaVisionModel,
)

__all__ = ["enable", "processor_tiles", "set_processor_tiles"]


@functools.cache
def _base_ids(tiles: int, max_num_tiles: int) -> tuple[int, ...]:
    """Aspect-ratio id among the canvases of ``tiles`` tiles -> id among those of the base's
    ``max_num_tiles`` (0, no image, stays 0)."""
    base = get_all_supported_aspect_ratios(max_num_tiles)
    own = get_all_supported_aspect_ratios(tiles)
    return (0, *(base.index(ratio) + 1 for ratio in own))


class _FirstSlots:
    """An embedding of the base's ``max_num_tiles`` slots applied to states of fewer slots: the
    states are zero-padded to the base's slots, embedded as the base does, and cut back."""

    max_num_tiles: int

    def forward(self, hidden_states: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        tiles = hidden_states.shape[1]
        if tiles == self.max_num_tiles:
            return super().forward(hidden_states, aspect_ratio_ids)  # type: ignore[misc]
        table = torch.tensor(_base_ids(tiles, self.max_num_tiles), device=aspect_ratio_ids.device)
        padded = F.pad(hidden_states, (0, 0, 0, 0, 0, self.max_num_tiles - tiles))
        return super().forward(padded, table[aspect_ratio_ids])[:, :tiles]  # type: ignore[misc]


class _AspectRatioEmbedding(_FirstSlots, MllamaPrecomputedAspectRatioEmbedding):
    pass


class _PositionEmbedding(_FirstSlots, MllamaPrecomputedPositionEmbedding):
    pass


_SLICED = {
    MllamaPrecomputedAspectRatioEmbedding: _AspectRatioEmbedding,
    MllamaPrecomputedPositionEmbedding: _PositionEmbedding,
}


def enable(vision_model: MllamaVisionModel) -> None:
    """Let ``vision_model`` run on any number of tile slots up to its ``max_num_tiles``. The
    embedding modules become subclasses of their own classes in place: parameters, state_dict
    keys and the result for all slots are unchanged. Calling it again changes nothing."""
    for name in (
        "pre_tile_positional_embedding",
        "post_tile_positional_embedding",
        "gated_positional_embedding",
    ):
        module = getattr(vision_model, name)
        module.__class__ = _SLICED.get(type(module), type(module))


def processor_tiles(processor: ProcessorMixin) -> int:
    """The tiles a processor fits a photograph onto."""
    return int(processor.image_processor.max_image_tiles)


def set_processor_tiles(processor: ProcessorMixin, tiles: int) -> None:
    processor.image_processor.max_image_tiles = tiles
