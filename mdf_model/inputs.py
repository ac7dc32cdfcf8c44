"""From an image and a prompt to model tensors: per-study preparation and batching.

`prepare_input` does the per-study CPU work once (validation, the processor's tiles, the U-Net
image, the prompt tokens), so a worker can prepare studies as they arrive and batch them later.
`collate` lays a batch out as text rows grouped by image: one row per image for generation and
training; for label scoring either one row per (image, label), or one packed row per image (the
prompt once, then every label's answer, each answer attending to the prompt and to itself only,
from the positions it would have after the prompt). Rows are left-padded, the layout
``generate()`` needs; the cross-attention mask opens at each row's ``<|image|>`` token, as
MllamaProcessor does, so padding and any text before the image see no image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.image_utils import ChannelDimension

from mdf_model.unet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IGNORE_INDEX",
    "ModelInputs",
    "PreparedInput",
    "collate",
    "prepare_input",
    "unet_frame",
]

IGNORE_INDEX = -100
MIN_IMAGE_SIDE = 32
# Below these (0..255 scale) a photograph shows no retina: a lens cap or a failed capture.
MIN_MEAN_BRIGHTNESS = 5.0
MIN_CONTRAST = 2.0
# The U-Net's square is first box-averaged by the largest whole factor that leaves it at least
# this many times its size, then filtered (Pillow's ``reducing_gap``): the bilinear filter of a
# 1752 px photograph reduced to the tiny model's 128 px spans 27 pixels a tap and took about
# 12 of its 25 ms of preparation (now 19). On the STARE photographs at 3504 x 2336 decoded at
# 1752 x 1168 the tiny model's label probabilities move by 6e-5 at most, its masks by 1 of 255.
# A factor under 2 (the 512 px U-Net of a 1752 px photograph) leaves the filter alone.
UNET_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class PreparedInput:
    """One study, ready to batch. Tensors are on the CPU.

    ``prompt_ids`` (S,) prompt tokens; ``pixel_values`` (1, tiles, 3, H, W), ``aspect_ratio_ids``
    (1,) and ``aspect_ratio_mask`` (1, tiles) from the Mllama image processor; ``unet_pixels``
    (3, N, N) normalised U-Net input (None in baseline mode); ``seg_target`` (C, N, N) in {0, 1}
    and ``seg_valid`` (C,) when a reference mask was given.
    """

    prompt_ids: torch.Tensor
    pixel_values: torch.Tensor
    aspect_ratio_ids: torch.Tensor
    aspect_ratio_mask: torch.Tensor
    unet_pixels: torch.Tensor | None
    seg_target: torch.Tensor | None = None
    seg_valid: torch.Tensor | None = None


@dataclass
class ModelInputs:
    """A batch for `MDFModel`: ``rows`` text rows over ``images`` images, rows grouped by image.

    Text side (rows, L): ``input_ids``, ``attention_mask``, ``position_ids``, ``prompt_mask``
    (True on prompt tokens, for FiLM pooling), ``lm_labels`` (answer tokens, IGNORE_INDEX
    elsewhere; None when there is no answer), ``answer_segments`` (k on the tokens of the row's
    k-th answer, from 1; 0 elsewhere; None when there is no answer), ``packed_mask`` (rows, L, L)
    True where a token may attend (None: causal over ``attention_mask``; set when rows pack
    several answers), ``cross_attention_mask`` (rows, L, 1, tiles).
    Image side: ``pixel_values`` (images, 1, tiles, 3, H, W), ``aspect_ratio_ids`` (images, 1),
    ``aspect_ratio_mask`` (images, 1, tiles), ``unet_pixels`` (images, 3, N, N) or None,
    ``seg_targets`` (images, C, N, N) and ``seg_valid`` (images, C) or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_mask: torch.Tensor
    lm_labels: torch.Tensor | None
    answer_segments: torch.Tensor | None
    packed_mask: torch.Tensor | None
    cross_attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    aspect_ratio_ids: torch.Tensor
    aspect_ratio_mask: torch.Tensor
    unet_pixels: torch.Tensor | None
    seg_targets: torch.Tensor | None = None
    seg_valid: torch.Tensor | None = None

    @property
    def rows_per_image(self) -> int:
        return self.input_ids.shape[0] // self.pixel_values.shape[0]

    def to(self, device: torch.device | str) -> ModelInputs:
        return dataclasses.replace(
            self,
            **{
                f.name: value.to(device)
                for f in dataclasses.fields(self)
                if isinstance(value := getattr(self, f.name), torch.Tensor)
            },
        )


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} pixels; need at least "
            f"{MIN_IMAGE_SIDE} on each side (empty or not a fundus photograph)"
        )
    # Enough pixels to judge, cheap for large photographs; copied to float32 once, which
    # takes half the time numpy's float64 mean and std of the strided view do.
    sample = image[::4, ::4].astype(np.float32)
    if float(sample.mean()) < MIN_MEAN_BRIGHTNESS or float(sample.std()) < MIN_CONTRAST:
        raise ValueError(
            "image is blank (nearly black or one flat colour): no retina visible "
            "(lens cap, failed capture?)"
        )


def _letterbox(
    image: Image.Image,
    size: int,
    resample: Image.Resampling,
    reducing_gap: float | None = None,
) -> Image.Image:
    """Centre on a black square (the fundus background) and resize: no distortion.
    ``reducing_gap``: Pillow's, see UNET_REDUCING_GAP.

    The pixels are those Pillow gives for that square, without box-averaging its black nor,
    for a landscape or square photograph, filtering its black rows across (a third of a 3:2
    photograph's square): 2.4 ms instead of 3.5 for a 1752 x 1168 photograph at 128 px, 10.6
    instead of 15.2 at 512.
    """
    side = max(image.size)
    left, top = (side - image.width) // 2, (side - image.height) // 2
    factor = 1
    if reducing_gap is not None and resample != Image.Resampling.NEAREST:
        factor = int(side / size / reducing_gap)
    extent: float = side  # the square's side in the pixels of ``image``, once reduced
    if factor > 1:
        # Pillow box-averages the square in blocks counted from its corner (partial ones at
        # its far edges): the blocks around the picture are black, so average the picture
        # alone on that grid, padded with black to whole blocks where it is off the grid.
        x0, y0 = left - left % factor, top - top % factor
        x1 = min(math.ceil((left + image.width) / factor) * factor, side)
        y1 = min(math.ceil((top + image.height) / factor) * factor, side)
        if (x0, y0, x1, y1) != (left, top, left + image.width, top + image.height):
            blocks = Image.new(image.mode, (x1 - x0, y1 - y0))
            blocks.paste(image, (left - x0, top - y0))
            image = blocks
        image, left, top, extent = image.reduce(factor), x0 // factor, y0 // factor, side / factor
    pixels = math.ceil(extent)
    if image.width == pixels:
        # Pillow resizes across, then down: the black rows stay black across, so only the
        # picture's rows are resized across before the black is added above and below.
        across = image.resize((size, image.height), resample, box=(0, 0, extent, image.height))
        strip = Image.new(image.mode, (size, pixels))
        strip.paste(across, (0, top))
        return strip.resize((size, size), resample, box=(0, 0, size, extent))
    square = Image.new(image.mode, (pixels, pixels))
    square.paste(image, (left, top))
    return square.resize((size, size), resample, box=(0, 0, extent, extent))


def _tile_image(processor: ProcessorMixin, image: np.ndarray) -> torch.Tensor:
    """The photograph (3, H, W) resized by the Mllama image processor's own ``resize``, which
    the processor then finds at its size and leaves as it is: the same pixel values in 1.4 ms
    instead of 10 for a 1752 x 1168 photograph, as the processor copies a photograph
    channels first before resizing it, and resizes that copy slower than the photograph's own
    layout. On a canvas of several tiles a resized picture can fit a smaller canvas than the
    photograph did (225 x 113 on up to four tiles): the processor is then given the
    photograph."""
    images = processor.image_processor

    def fit(picture: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return images.resize(picture, images.size, images.max_image_tiles, images.resample)

    # DLPack shares the photograph's memory without torch.from_numpy's warning that decoding
    # left it read-only (nothing writes to it); a view in another order (a flip, BGR
    # reversed) is copied first, as torch takes no negative strides.
    photograph = torch.from_dlpack(np.ascontiguousarray(image)).permute(2, 0, 1)
    if getattr(images, "backend", None) != "torchvision":  # another resize: left to it
        return photograph
    resized, tiles = fit(photograph)
    again, same_tiles = fit(resized)
    return resized if (again.shape, same_tiles) == (resized.shape, tiles) else photograph


def _unet_pixels(image: Image.Image, size: int) -> torch.Tensor:
    letterboxed = _letterbox(image, size, Image.Resampling.BILINEAR, UNET_REDUCING_GAP)
    array = np.asarray(letterboxed, dtype=np.float32)
    pixels = torch.from_numpy(array / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std


def _seg_target(
    target: np.ndarray, image_shape: tuple[int, ...], channels: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """An (H, W) mask of the first channel or an (H, W, C) mask of all channels, nonzero = on."""
    planes = target[..., None] if target.ndim == 2 else target
    if planes.ndim != 3 or planes.shape[:2] != image_shape[:2] or planes.shape[2] > channels:
        raise ValueError(
            f"seg_target must be (H, W) or (H, W, C<={channels}) matching the image "
            f"{image_shape[:2]}, got {target.shape}"
        )
    resized = [
        np.asarray(
            _letterbox(
                Image.fromarray((plane != 0).astype(np.uint8) * 255), size, Image.Resampling.NEAREST
            )
        )
        for plane in np.moveaxis(planes, 2, 0)
    ]
    out = torch.zeros(channels, size, size)
    out[: len(resized)] = torch.from_numpy(np.stack(resized) > 127).float()
    valid = torch.arange(channels) < len(resized)
    return out, valid


def unet_frame(
    image: np.ndarray, mask: np.ndarray, size: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An (H, W, 3) uint8 photograph and its (H, W) or (H, W, C) mask in the U-Net's frame,
    letterboxed exactly as `prepare_input` does: (3, N, N) normalised pixels, the (C, N, N)
    target in {0, 1} and the (C,) channels it gives. For training the U-Net on its own."""
    target, valid = _seg_target(mask, image.shape, channels, size)
    return _unet_pixels(Image.fromarray(image), size), target, valid


def prepare_input(
    processor: ProcessorMixin,
    image: np.ndarray,
    prompt: str,
    *,
    unet_size: int | None,
    seg_target: np.ndarray | None = None,
    seg_channels: int = 0,
) -> PreparedInput:
    """Validate and convert one study; ``unet_size`` None skips the U-Net image (baseline)."""
    _check_image(image)
    encoded = processor(
        images=[[_tile_image(processor, image)]],
        text=[prompt],
        return_tensors="pt",
        input_data_format=ChannelDimension.FIRST,
    )
    target = valid = None
    if seg_target is not None:
        if unet_size is None:
            raise ValueError("seg_target given, but a baseline model has no segmentation")
        target, valid = _seg_target(np.asarray(seg_target), image.shape, seg_channels, unet_size)
    return PreparedInput(
        prompt_ids=encoded["input_ids"][0],
        pixel_values=encoded["pixel_values"][0],
        aspect_ratio_ids=encoded["aspect_ratio_ids"][0],
        aspect_ratio_mask=encoded["aspect_ratio_mask"][0],
        unet_pixels=None if unet_size is None else _unet_pixels(Image.fromarray(image), unet_size),
        seg_target=target,
        seg_valid=valid,
    )


def _stack_unet_pixels(batch: Sequence[PreparedInput]) -> torch.Tensor | None:
    pixels = [item.unet_pixels for item in batch]
    if all(p is None for p in pixels):
        return None
    if any(p is None for p in pixels):
        raise ValueError("a batch must be all with or all without U-Net inputs")
    return torch.stack(pixels)  # type: ignore[arg-type]


def _stack_seg_targets(
    batch: Sequence[PreparedInput],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Studies without a reference mask get an all-invalid placeholder."""
    template = next((item for item in batch if item.seg_target is not None), None)
    if template is None:
        return None, None
    empty = torch.zeros_like(template.seg_target)
    invalid = torch.zeros_like(template.seg_valid)
    targets = [empty if item.seg_target is None else item.seg_target for item in batch]
    valid = [invalid if item.seg_valid is None else item.seg_valid for item in batch]
    return torch.stack(targets), torch.stack(valid)


@dataclass
class _Row:
    """One text row before padding."""

    ids: list[int]
    labels: list[int]
    segments: list[int]
    positions: list[int]
    prompt_length: int
    tiles: int


def _row(item: PreparedInput, answers: Sequence[Sequence[int]]) -> _Row:
    """The prompt, then ``answers`` one after another, each from the position after the prompt
    and numbered from 1 in ``segments``."""
    prompt = item.prompt_ids.tolist()
    row = _Row(
        ids=list(prompt),
        labels=[IGNORE_INDEX] * len(prompt),
        segments=[0] * len(prompt),
        positions=list(range(len(prompt))),
        prompt_length=len(prompt),
        tiles=int(item.aspect_ratio_mask.sum()),
    )
    for segment, answer in enumerate(answers, start=1):
        row.ids += answer
        row.labels += answer
        row.segments += [segment] * len(answer)
        row.positions += range(len(prompt), len(prompt) + len(answer))
    return row


def _packed_mask(segments: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Causal attention over real tokens, where an answer sees the prompt and itself only.
    Padding sees itself, so that no softmax row is empty (an empty one would give NaN)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same_answer = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    visible = causal & same_answer & attention_mask.bool()[:, None, :]
    return visible | torch.eye(length, dtype=torch.bool)


def collate(
    batch: Sequence[PreparedInput],
    answers: Sequence[Sequence[Sequence[int]]] | None,
    *,
    pad_token_id: int,
    image_token_id: int,
    packed: bool = False,
) -> ModelInputs:
    """Lay out a batch. ``answers[i]`` lists the answer token ids appended to image i's prompt
    (the same number for every image): one row each, or with ``packed`` all in image i's one
    row. None gives one prompt-only row per image."""
    if not batch:
        raise ValueError("empty batch")
    per_image = [[[]] for _ in batch] if answers is None else [list(a) for a in answers]
    if len(per_image) != len(batch) or len({len(a) for a in per_image}) != 1:
        raise ValueError("answers must give the same number of rows for every image")
    rows = [
        _row(item, row_answers)
        for item, item_answers in zip(batch, per_image, strict=True)
        for row_answers in ([item_answers] if packed else [[a] for a in item_answers])
    ]

    shape = (len(rows), max(len(row.ids) for row in rows))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    lm_labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    answer_segments = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    prompt_mask = torch.zeros(shape, dtype=torch.bool)
    tiles = batch[0].aspect_ratio_mask.shape[-1]
    cross_attention_mask = torch.zeros((*shape, 1, tiles), dtype=torch.long)
    for i, row in enumerate(rows):
        pad = shape[1] - len(row.ids)
        input_ids[i, pad:] = torch.tensor(row.ids)
        lm_labels[i, pad:] = torch.tensor(row.labels)
        answer_segments[i, pad:] = torch.tensor(row.segments)
        position_ids[i, pad:] = torch.tensor(row.positions)
        attention_mask[i, pad:] = 1
        prompt_mask[i, pad : pad + row.prompt_length] = True
        cross_attention_mask[i, pad + row.ids.index(image_token_id) :, 0, : row.tiles] = 1
    seg_targets, seg_valid = _stack_seg_targets(batch)

    return ModelInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        prompt_mask=prompt_mask,
        lm_labels=None if answers is None else lm_labels,
        answer_segments=None if answers is None else answer_segments,
        packed_mask=_packed_mask(answer_segments, attention_mask) if packed else None,
        cross_attention_mask=cross_attention_mask,
        pixel_values=torch.stack([item.pixel_values for item in batch]),
        aspect_ratio_ids=torch.stack([item.aspect_ratio_ids for item in batch]),
        aspect_ratio_mask=torch.stack([item.aspect_ratio_mask for item in batch]),
        unet_pixels=_stack_unet_pixels(batch),
        seg_targets=seg_targets,
        seg_valid=seg_valid,
    )
