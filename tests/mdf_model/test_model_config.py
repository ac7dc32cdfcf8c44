"""MDFConfig: presets, validation with clear messages, JSON round trip."""

from __future__ import annotations

import pytest

from mdf_model import PRESETS, MDFConfig, MDFModel


def test_presets_are_valid_and_fuse_at_cross_attention_layers() -> None:
    big = PRESETS["llama-3.2-11b-vision"]
    assert big.fusion_layers == (3, 18, 28, 38)
    assert big.hidden_size == 4096
    assert big.unet_input_size == 512
    assert set(big.fusion_layers) <= set(big.cross_attention_layers)
    assert PRESETS["tiny"].fusion_layers == (1, 3, 5, 7)


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"llama-3.2-11b-vision.*tiny"):
        MDFConfig.from_preset("llama-90b")


@pytest.mark.parametrize(
    ("preset", "layers", "valid"),
    [
        ("tiny", (2,), r"\[1, 3, 5, 7\]"),
        ("tiny", (1, 4), r"\[1, 3, 5, 7\]"),
        ("llama-3.2-11b-vision", (3, 17), r"\[3, 8, 13, 18, 23, 28, 33, 38\]"),
    ],
)
def test_fusion_layer_that_is_not_cross_attention_is_refused(
    preset: str, layers: tuple[int, ...], valid: str
) -> None:
    with pytest.raises(ValueError, match=rf"not cross-attention layers.*{valid}"):
        MDFConfig.from_preset(preset, fusion_layers=layers)


def test_fusion_layers_are_checked_against_the_loaded_base_model(tiny_base_dir) -> None:
    # The configuration claims a cross-attention layer at 2; the weights have none there.
    config = MDFConfig.from_preset("tiny")
    text = {**config.text_config, "cross_attention_layers": [1, 2, 3, 5, 7]}
    claimed = config.replace(
        base_config={**config.base_config, "text_config": text}, fusion_layers=(2, 3)
    )
    with pytest.raises(ValueError, match=r"\[2\].*valid fusion layers are \[1, 3, 5, 7\]"):
        MDFModel.from_base(tiny_base_dir, claimed)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ("acquired",)}, "at least two labels"),
        ({"labels": ("Glaucoma", "glaucoma")}, "distinct"),
        ({"unet_input_size": 100}, "multiple of 32"),
        ({"patch_grid": 8, "patch_pool": 2}, "deepest skip level"),
        ({"skip_levels": (0, 1, 2, 3)}, "skip_levels"),
        ({"prompt_template": "{clinical}no image here {labels}"}, "<|image|>"),
        ({"prompt_template": "<|image|>{clinical}{diagnosis}"}, "unknown placeholders"),
        ({"answer_template": " the answer"}, "{label}"),
        ({"frozen": ("decoder",)}, "unknown components"),
        ({"alpha": float("nan")}, "finite"),
        ({"baseline": True, "frozen": ("unet",)}, "baseline"),
        ({"vision_tiles": 0}, "vision_tiles must be an integer from 1"),
        ({"vision_tiles": 5}, r"max_num_tiles \(4\)"),
        ({"unet_encoder": "efficientnet-b0"}, "unet_encoder must be one of"),
    ],
)
def test_invalid_configurations_are_refused_with_a_reason(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        MDFConfig.from_preset("tiny", **changes)


def test_json_round_trip(tmp_path) -> None:
    config = MDFConfig.from_preset("tiny", labels=("normal", "glaucoma", "AMD"), alpha=0.25)
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert MDFConfig.from_json_file(path) == config


def test_a_stored_configuration_without_unet_encoder_is_the_papers_resnet50(
    tiny_base_dir,
) -> None:
    # Every checkpoint written before the field existed had a ResNet50 U-Net, the tiny
    # preset's included; its weights only fit that encoder.
    data = MDFConfig.from_preset("tiny").to_dict()
    assert data.pop("unet_encoder") == "resnet18"
    legacy = MDFConfig.from_dict(data)
    assert legacy.unet_encoder == "resnet50"
    model = MDFModel.from_base(tiny_base_dir, legacy)
    assert model.unet.skip_channels == [64, 256, 512, 1024]
    assert MDFModel.from_base(tiny_base_dir, MDFConfig.from_preset("tiny")).unet.skip_channels == [
        64,
        64,
        128,
        256,
    ]


def test_unknown_field_in_a_stored_configuration_is_refused() -> None:
    data = MDFConfig.from_preset("tiny").to_dict()
    data["fusion_scale"] = 2.0
    with pytest.raises(ValueError, match="fusion_scale"):
        MDFConfig.from_dict(data)


def test_the_11b_preset_builds_on_the_meta_device_without_memory() -> None:
    model = MDFModel.from_config(PRESETS["llama-3.2-11b-vision"], device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.fusion.layers == (3, 18, 28, 38)
    assert 10.6e9 < model.parameter_counts()["base"] < 10.8e9
    hooked = [
        i for i, layer in enumerate(model.base.model.language_model.layers) if layer._forward_hooks
    ]
    assert hooked == [3, 18, 28, 38]
