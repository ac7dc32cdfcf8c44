"""`prepare_input`'s shortcuts give the pixels of the plain way: the processor's own tiles of
the photograph, and the photograph resized by Pillow on a whole black square for the U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mdf_model.configuration import MDFConfig
from mdf_model.inputs import UNET_REDUCING_GAP, prepare_input
from mdf_model.tiny import build_offline_processor
from mdf_model.unet import IMAGENET_MEAN, IMAGENET_STD

PROMPT = "<|image|>label?"


def _photograph(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)


def _on_square(picture: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    """The picture centred on a black square of its long side, resized by Pillow."""
    side = max(picture.size)
    square = Image.new(picture.mode, (side, side))
    square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    gap = None if resample == Image.Resampling.NEAREST else UNET_REDUCING_GAP
    return np.array(square.resize((size, size), resample, reducing_gap=gap))


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (1168, 1752, 128),  # a camera's 3:2 decoded at half size: box-averaged by 4
        (1170, 1750, 128),  # its rows off the grid of blocks
        (1751, 1163, 128),  # portrait, a partial block at the square's far edges
        (1168, 1752, 512),  # no box average: resized across, then down
        (605, 700, 512),  # enlarged
        (584, 565, 128),
        (512, 512, 128),
    ],
)
def test_the_unet_input_is_the_photograph_resized_on_its_black_square(
    height: int, width: int, size: int
) -> None:
    image = _photograph(height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 3 : height // 2, width // 5 : width // 4] = True
    processor = build_offline_processor(MDFConfig.from_preset("tiny"))
    prepared = prepare_input(
        processor, image, PROMPT, unet_size=size, seg_target=mask, seg_channels=2
    )
    assert prepared.unet_pixels is not None and prepared.seg_target is not None
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    levels = ((prepared.unet_pixels * std + mean) * 255).round().to(torch.uint8)
    expected = _on_square(Image.fromarray(image), size, Image.Resampling.BILINEAR)
    assert torch.equal(levels, torch.from_numpy(expected).permute(2, 0, 1))
    target = _on_square(
        Image.fromarray(mask.astype(np.uint8) * 255), size, Image.Resampling.NEAREST
    )
    assert torch.equal(prepared.seg_target[0], torch.from_numpy(target > 127).float())


@pytest.mark.parametrize(
    ("tiles", "height", "width"),
    [
        (1, 1168, 1752),
        (1, 584, 565),
        (1, 32, 900),
        (4, 1168, 1752),
        (2, 113, 114),  # resized onto one tile it would fit one: the processor resizes it
        (4, 113, 225),
    ],
)
def test_the_tiles_are_those_the_processor_makes_of_the_photograph(
    tiles: int, height: int, width: int
) -> None:
    processor = build_offline_processor(MDFConfig.from_preset("tiny", vision_tiles=tiles))
    for image in (_photograph(height, width), _photograph(height, width)[..., ::-1]):
        prepared = prepare_input(processor, image, PROMPT, unet_size=None)
        plain = processor(images=[[Image.fromarray(image)]], text=[PROMPT], return_tensors="pt")
        assert torch.equal(prepared.pixel_values, plain["pixel_values"][0])
        assert torch.equal(prepared.aspect_ratio_ids, plain["aspect_ratio_ids"][0])
        assert torch.equal(prepared.aspect_ratio_mask, plain["aspect_ratio_mask"][0])


def test_a_processor_of_another_backend_makes_its_own_tiles() -> None:
    """A checkpoint whose processor resizes with Pillow (not torchvision) gets the same
    tiles as from the photograph itself: the shortcut is left to the torchvision one."""
    from transformers import MllamaImageProcessorPil

    processor = build_offline_processor(MDFConfig.from_preset("tiny"))
    own = processor.image_processor
    processor.image_processor = MllamaImageProcessorPil(
        size=own.size, max_image_tiles=own.max_image_tiles
    )
    image = _photograph(1168, 1752)
    prepared = prepare_input(processor, image, PROMPT, unet_size=None)
    plain = processor(images=[[Image.fromarray(image)]], text=[PROMPT], return_tensors="pt")
    assert torch.equal(prepared.pixel_values, plain["pixel_values"][0])
