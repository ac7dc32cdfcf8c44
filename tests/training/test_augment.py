"""The joint loop's flips: the prepared tensors flipped equal the flipped photograph prepared,
and the loop trains on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mdf.synthetic.fundus import generate_case
from mdf_model.configuration import MDFConfig
from mdf_model.inputs import prepare_input
from mdf_model.tiny import build_offline_processor
from training.augment import flipped, randomly_flipped
from training.config import Augmentation, TrainConfig, VesselStage
from training.run import load_for_training
from training.trainer import Trainer

TILE = MDFConfig.from_preset("tiny").vision_config["image_size"]


def _prepared(image: np.ndarray, mask: np.ndarray, tiles: int):
    processor = build_offline_processor(MDFConfig.from_preset("tiny", vision_tiles=tiles))
    return prepare_input(
        processor,
        image,
        "<|image|>label?",
        unet_size=max(image.shape[:2]),
        seg_target=mask,
        seg_channels=2,
    )


def _photograph(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, rng.random((height, width, 2)) > 0.7


@pytest.mark.parametrize(("horizontal", "vertical"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize(("tiles", "rows", "cols"), [(1, 1, 1), (4, 1, 2), (4, 2, 1), (4, 2, 2)])
def test_flipping_the_prepared_canvas_is_preparing_the_flipped_photograph(
    horizontal: bool, vertical: bool, tiles: int, rows: int, cols: int
) -> None:
    # A photograph that fills its canvas exactly (no resize, no padding): its tiles, flipped
    # and put back in canvas order, are those of the flipped photograph.
    image, mask = _photograph(rows * TILE, cols * TILE)
    axes = tuple(axis for axis, flip in ((1, horizontal), (0, vertical)) if flip)
    expected = _prepared(np.flip(image, axes).copy(), np.flip(mask, axes).copy(), tiles)
    got = flipped(_prepared(image, mask, tiles), horizontal=horizontal, vertical=vertical)
    assert int(got.aspect_ratio_mask.sum()) == rows * cols
    torch.testing.assert_close(got.pixel_values, expected.pixel_values, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.seg_target, expected.seg_target, rtol=0, atol=0)
    torch.testing.assert_close(got.unet_pixels, expected.unet_pixels, rtol=0, atol=1e-6)


def test_only_the_allowed_flips_are_drawn() -> None:
    image, mask = _photograph(TILE, TILE)
    item = _prepared(image, mask, 1)
    inputs = [item] * 64
    indices = np.arange(64)
    rng = np.random.default_rng(0)

    off = randomly_flipped(
        inputs, indices, indices, rng, Augmentation(horizontal_flip=False, vertical_flip=False)
    )
    assert all(out is item for out in off.values())
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state

    left_right = flipped(item, horizontal=True, vertical=False)
    out = randomly_flipped(inputs, indices, indices, rng, Augmentation(horizontal_flip=True))
    same = [torch.equal(o.unet_pixels, item.unet_pixels) for o in out.values()]
    mirrored = [torch.equal(o.unet_pixels, left_right.unet_pixels) for o in out.values()]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48  # about half, never none or all


def _first_epoch_losses(checkpoint: Path, augment: Augmentation) -> dict[str, float]:
    config = TrainConfig(epochs=1, batch_size=2, vessels=VesselStage(steps=0), augment=augment)
    trainer = Trainer(load_for_training(checkpoint, config), config)
    cases = [generate_case(seed, size=96) for seed in range(4)]
    inputs = [
        trainer.classifier.prepare(case.image, None, seg_target=case.vessel_mask) for case in cases
    ]
    targets = [case.label for case in cases]
    return trainer.fit(inputs, targets, inputs, targets).train[0]


def test_the_joint_loop_trains_on_flipped_images_when_told_to(tiny_checkpoint: Path) -> None:
    off = Augmentation()
    plain = _first_epoch_losses(tiny_checkpoint, off)
    assert _first_epoch_losses(tiny_checkpoint, off) == plain  # the comparison below can tell
    flipping = _first_epoch_losses(
        tiny_checkpoint, Augmentation(horizontal_flip=True, vertical_flip=True)
    )
    assert flipping["seg_loss"] != pytest.approx(plain["seg_loss"], rel=1e-4)


def test_a_rank_flips_its_share_as_the_whole_batch_would() -> None:
    image, mask = _photograph(TILE, TILE)
    inputs = [_prepared(image, mask, 1)] * 16
    batch, both = np.arange(16), Augmentation(horizontal_flip=True, vertical_flip=True)
    whole = randomly_flipped(inputs, batch, batch, np.random.default_rng(3), both)
    share = randomly_flipped(inputs, batch, batch[8:], np.random.default_rng(3), both)
    assert sorted(share) == list(range(8, 16))
    assert all(torch.equal(share[i].pixel_values, whole[i].pixel_values) for i in share)
    assert len({whole[i].pixel_values.numpy().tobytes() for i in whole}) > 1  # not all alike
