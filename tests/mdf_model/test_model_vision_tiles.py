"""``vision_tiles``: the vision tower computes the tile slots a photograph may use, no padding
slots; all four reproduce the released model; a checkpoint is served only with its own value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch
from transformers import MllamaForConditionalGeneration, MllamaVisionModel
from transformers.models.mllama.image_processing_mllama import get_all_supported_aspect_ratios

from mdf_model import CheckpointError, Classifier, MDFConfig, MDFModel, load_classifier
from mdf_model.checkpoint import write_manifest
from tests.mdf_model.conftest import synthetic_fundus
from tests.mdf_model.legacy import released_before_vision_tiles, with_processor_tiles

# Shapes (height, width) on which the tiny processor (112 px tiles) puts 1, 2 and 4 tiles.
SQUARE, TALL, LARGE = (512, 512), (224, 112), (300, 200)


def vision_states(model: MDFModel, image: np.ndarray) -> tuple[torch.Tensor, ...]:
    inputs = Classifier(model).generation_inputs([Classifier(model).prepare(image)])
    with torch.no_grad():
        out = model.base.model.vision_model(
            pixel_values=inputs.pixel_values,
            aspect_ratio_ids=inputs.aspect_ratio_ids,
            aspect_ratio_mask=inputs.aspect_ratio_mask,
        )
    return inputs.pixel_values, inputs.aspect_ratio_ids, inputs.aspect_ratio_mask, out[0]


@pytest.mark.parametrize(("tiles", "shape", "used"), [(1, SQUARE, 1), (1, LARGE, 1), (4, LARGE, 4)])
def test_the_processor_fits_a_photograph_onto_vision_tiles(
    make_model, tiles: int, shape: tuple[int, int], used: int
) -> None:
    classifier = Classifier(make_model(vision_tiles=tiles))
    item = classifier.prepare(synthetic_fundus(*shape, seed=0))
    assert item.pixel_values.shape[:2] == (1, tiles)
    assert int(item.aspect_ratio_mask.sum()) == used


def test_four_slots_compute_what_the_released_model_computes(
    make_model, tiny_base_dir: Path
) -> None:
    model = make_model(vision_tiles=4)
    released = MllamaForConditionalGeneration.from_pretrained(tiny_base_dir).model.vision_model
    pixels, ids, mask, states = vision_states(model, synthetic_fundus(*SQUARE, seed=0))
    with torch.no_grad():
        expected = released(pixel_values=pixels, aspect_ratio_ids=ids, aspect_ratio_mask=mask)[0]
    assert torch.equal(states, expected)


def k_tile_tower(released: MllamaVisionModel, tiles: int) -> MllamaVisionModel:
    """A stock Mllama vision tower built for ``tiles`` slots, its tile embeddings taken from the
    released tower's entries for the same canvas shapes and the first ``tiles`` slots."""
    config = released.config.__class__(
        **{
            **released.config.to_dict(),
            "max_num_tiles": tiles,
            "supported_aspect_ratios": [list(r) for r in get_all_supported_aspect_ratios(tiles)],
        }
    )
    tower = MllamaVisionModel(config).eval()
    state = released.state_dict()
    base = get_all_supported_aspect_ratios(released.config.max_num_tiles)
    rows = [0] + [base.index(r) + 1 for r in get_all_supported_aspect_ratios(tiles)]
    for name in (
        "pre_tile_positional_embedding.embedding.weight",
        "post_tile_positional_embedding.embedding.weight",
        "gated_positional_embedding.tile_embedding.weight",
    ):
        per_slot = state[name].shape[1] // released.config.max_num_tiles
        state[name] = state[name][rows, : tiles * per_slot]
    tower.load_state_dict(state, strict=True)
    return tower


@pytest.mark.parametrize(("tiles", "shape"), [(1, SQUARE), (2, TALL)], ids=["1 tile", "2 tiles"])
def test_fewer_slots_compute_a_stock_tower_built_for_them(
    make_model, tiny_base_dir: Path, tiles: int, shape: tuple[int, int]
) -> None:
    model = make_model(vision_tiles=tiles)
    released = MllamaForConditionalGeneration.from_pretrained(tiny_base_dir).model.vision_model
    pixels, ids, mask, states = vision_states(model, synthetic_fundus(*shape, seed=0))
    assert int(mask.sum()) == tiles
    with torch.no_grad():
        expected = k_tile_tower(released, tiles)(
            pixel_values=pixels, aspect_ratio_ids=ids, aspect_ratio_mask=mask
        )[0]
    torch.testing.assert_close(states, expected, atol=1e-6, rtol=1e-6)


def test_padding_slots_change_the_answer(make_model) -> None:
    """Why a checkpoint is served with its own value: the same weights and photograph score
    differently with and without the padding tiles."""
    image = synthetic_fundus(*SQUARE, seed=0)
    probabilities = [
        Classifier(make_model(vision_tiles=tiles)).classify([image], generate_text=False)[0]
        for tiles in (1, 4)
    ]
    one, four = (p.probabilities["acquired"] for p in probabilities)
    assert abs(one - four) > 1e-4


def test_the_checkpoint_records_vision_tiles_and_refuses_another(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "mdf_config.json").read_text())
    assert config["vision_tiles"] == 1
    assert load_classifier(tiny_checkpoint, vision_tiles=1).model.config.vision_tiles == 1
    with pytest.raises(CheckpointError, match=r"^mdf_config\.json: trained with vision_tiles 1, "):
        load_classifier(tiny_checkpoint, vision_tiles=4)


def test_a_configuration_without_vision_tiles_means_all_the_base_slots() -> None:
    """What a model computed before the field existed: every slot of the base's tower."""
    data = MDFConfig.from_preset("tiny").to_dict()
    del data["vision_tiles"]
    assert MDFConfig.from_dict(data).vision_tiles == 4
    data["base_config"]["vision_config"]["max_num_tiles"] = 2
    assert MDFConfig.from_dict(data).vision_tiles == 2


def test_a_checkpoint_from_before_vision_tiles_is_served_as_it_was_trained(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Whatever tile count the service serves with: it records none, and refusing it would
    refuse every model of the previous release. One that records 4 is refused with 1."""
    legacy = released_before_vision_tiles(tiny_checkpoint, tmp_path / "legacy")
    four = with_processor_tiles(tiny_checkpoint, tmp_path / "four", 4)
    image = synthetic_fundus(*SQUARE, seed=0)
    expected = load_classifier(four, vision_tiles=4).classify([image], generate_text=False)
    for served in (None, 1, 4):
        with structlog.testing.capture_logs() as logs:
            classifier = load_classifier(legacy, vision_tiles=served)
        assert classifier.model.config.vision_tiles == 4
        answer = classifier.classify([image], generate_text=False)
        assert answer[0].probabilities == expected[0].probabilities
        warned = [line for line in logs if line["event"] == "model.vision_tiles_unrecorded"]
        assert [(w["vision_tiles"], w["configured"]) for w in warned] == (
            [(4, 1)] if served == 1 else []
        )
    with pytest.raises(CheckpointError, match=r"trained with vision_tiles 4, served with 1"):
        load_classifier(four, vision_tiles=1)


def test_a_processor_that_disagrees_with_the_configuration_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    damaged = Path(shutil.copytree(tiny_checkpoint, tmp_path / "copy"))
    path = damaged / "processor" / "processor_config.json"
    processor = json.loads(path.read_text())
    processor["image_processor"]["max_image_tiles"] = 4
    path.write_text(json.dumps(processor))
    write_manifest(damaged)
    with pytest.raises(CheckpointError, match=r"^processor: fits a photograph onto 4 tiles"):
        load_classifier(damaged)


def test_inputs_of_another_tile_count_are_refused(classifier: Classifier, make_model) -> None:
    four = Classifier(make_model(vision_tiles=4))
    inputs = four.packed_scoring_inputs([four.prepare(synthetic_fundus(*SQUARE, seed=0))])
    with pytest.raises(ValueError, match="inputs of 4 tiles for a model of vision_tiles 1"):
        classifier.model.score(inputs)
