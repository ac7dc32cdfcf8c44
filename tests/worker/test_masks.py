"""Masks a grader can use: one PNG per channel at the model's resolution that reads back at
the source's width and height as the model's probabilities upsampled from its letterboxed
square, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from mdf.imaging.masks import read_mask
from worker.masks import ImageMask, mask_directory, save_masks

CHANNELS = ["vessels", "lesions"]


def reference(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear sampling of the letterboxed square at each source pixel's centre, by torch:
    the picture of ``size`` sits centred on the square, as ``mdf_model.inputs`` puts it."""
    width, height = size
    side, n = max(width, height), plane.shape[0]
    left, top = (side - width) // 2, (side - height) // 2
    x = (left + torch.arange(width) + 0.5) / side * 2 - 1  # grid_sample's [-1, 1] corners
    y = (top + torch.arange(height) + 0.5) / side * 2 - 1
    grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)[None].double()
    square = torch.from_numpy(plane).double()[None, None]
    sampled = torch.nn.functional.grid_sample(
        square, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    assert n == square.shape[-1]
    return sampled[0, 0].numpy()


def smooth_map(n: int, seed: int) -> np.ndarray:
    """(2, n, n) probabilities with structure at every scale the mask resolves."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((2, 1, n // 8, n // 8)))
    fine = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic")
    detail = torch.from_numpy(rng.random((2, 1, n, n))) * 0.3
    return (((fine + detail).clamp(0, 1.3) / 1.3 * 255).round().byte().numpy())[:, 0]


@pytest.mark.parametrize("size", [(3504, 2336), (333, 500), (701, 701), (131, 400)])
def test_each_channel_is_the_probability_map_upsampled_to_the_source(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    mask = smooth_map(128, seed=size[0])
    paths = save_masks([ImageMask(5, mask, size)], CHANNELS, tmp_path)
    files = [Path(p) for p in paths[5].split(";")]
    assert files == [tmp_path / "5.vessels.png", tmp_path / "5.lesions.png"]  # channel order
    for plane, file in zip(mask, files, strict=True):
        with PILImage.open(file) as picture:  # the picture region at the mask's resolution
            assert (picture.format, picture.mode) == ("PNG", "L")
            assert max(picture.size) == 128  # the model's pixels, not the source's
        written = read_mask(file).astype(float)
        assert written.shape == (size[1], size[0])
        difference = np.abs(written - reference(plane, size))
        assert difference.max() < 2.5 and difference.mean() < 0.5  # 8-bit rounding only
    # probabilities, not a thresholded mask: the in-between values survive
    assert len(np.unique(written)) > 100


def test_the_mask_lines_up_with_the_picture_as_the_model_letterboxed_it(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """A shape drawn on a non-square picture goes through the model's own letterboxing
    (a reference mask) and back: it lands where it was drawn."""
    from mdf_model import load_classifier

    classifier = load_classifier(tiny_checkpoint)
    width, height = 300, 180
    picture = np.full((height, width, 3), 120, dtype=np.uint8)
    picture[::7] = 40  # not blank
    drawn = np.zeros((height, width), dtype=bool)
    drawn[40:120, 200:280] = True  # off centre, near the right edge
    prepared = classifier.prepare(picture, None, seg_target=drawn)
    letterboxed = (prepared.seg_target.numpy() * 255).astype(np.uint8)  # (C, N, N)
    paths = save_masks([ImageMask(1, letterboxed, (width, height))], CHANNELS, tmp_path)
    vessels = read_mask(paths[1].split(";")[0]) > 127
    overlap = (vessels & drawn).sum() / (vessels | drawn).sum()
    assert overlap > 0.9, overlap


def test_a_chunk_writes_one_file_per_channel_and_skips_models_without_masks(
    tmp_path: Path,
) -> None:
    masks = [
        ImageMask(1, smooth_map(64, 1), (120, 80)),
        ImageMask(2, np.zeros((0, 0, 0), dtype=np.uint8), (120, 80)),  # a baseline model
        ImageMask(3, smooth_map(64, 3), (80, 120)),
    ]
    paths = save_masks(masks, CHANNELS, tmp_path)
    assert sorted(paths) == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "1.lesions.png",
        "1.vessels.png",
        "3.lesions.png",
        "3.vessels.png",
    ]
    assert read_mask(tmp_path / "3.vessels.png").shape == (120, 80)
    assert save_masks([masks[1]], CHANNELS, tmp_path / "none") == {}
    assert not (tmp_path / "none").exists()


def test_a_rewrite_replaces_the_files_with_the_same_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    directory = mask_directory(tmp_path / "masks", "v1/../../etc")
    assert directory.parent == (tmp_path / "masks").resolve()
    mask = ImageMask(7, smooth_map(64, 7), (90, 60))
    first = save_masks([mask], CHANNELS, directory)
    before = [Path(p).read_bytes() for p in first[7].split(";")]
    assert save_masks([mask], CHANNELS, directory) == first  # a re-delivered chunk
    assert [Path(p).read_bytes() for p in first[7].split(";")] == before
    assert sorted(p.name for p in directory.iterdir()) == ["7.lesions.png", "7.vessels.png"]


def test_a_failed_write_leaves_no_temporary_and_a_wrong_mask_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "4.lesions.png").mkdir()  # the rename onto it fails
    with pytest.raises(OSError):
        save_masks([ImageMask(4, smooth_map(64, 4), (60, 60))], CHANNELS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.lesions.png", "4.vessels.png"]
    with pytest.raises(ValueError, match="must be"):
        save_masks([ImageMask(4, smooth_map(64, 4), (60, 60))], ["vessels"], tmp_path)
    with pytest.raises(ValueError, match="square"):
        save_masks([ImageMask(4, np.zeros((2, 8, 9), np.uint8), (60, 60))], CHANNELS, tmp_path)
