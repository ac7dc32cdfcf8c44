"""A mask channel's file: the model's pixels of the picture region and where the photograph
lies in them, read back at the photograph's size as writing at that size gave it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mdf.imaging.masks import BOX_KEY, SIZE_KEY, mask_file, read_mask, to_source


def soft_plane(n: int, seed: int) -> np.ndarray:
    """(n, n) uint8 probabilities with edges at every position, zero in the letterbox."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (n // 8, n // 8), dtype=np.uint8))
    return np.asarray(coarse.resize((n, n), Image.Resampling.BICUBIC))


def write(plane: np.ndarray, size: tuple[int, int], path: Path) -> Path:
    picture, info = mask_file(plane, size)
    picture.save(path, "PNG", pnginfo=info)
    return path


@pytest.mark.parametrize(
    "size", [(3504, 2336), (2336, 3504), (565, 584), (512, 512), (64, 40), (100, 300)]
)
def test_a_mask_reads_back_as_written_at_the_source_size(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    plane = soft_plane(512, seed=size[0])
    path = write(plane, size, tmp_path / "1.vessels.png")
    with Image.open(path) as png:
        stored = png.size
    read = read_mask(path).astype(int)
    at_source = np.asarray(to_source(plane, size)).astype(int)
    assert read.shape == at_source.shape == (size[1], size[0])
    # Pillow's fixed-point weights round a box shifted by the crop now and then differently
    # (more often where it reduces: a photograph smaller than the square)
    assert np.abs(read - at_source).max() <= 1
    assert (read != at_source).mean() < (0.001 if max(size) > 512 else 0.2)
    assert stored[0] * stored[1] <= 512 * 512  # the model's pixels, whatever the source


def test_a_wide_photograph_keeps_only_its_rows_of_the_square(tmp_path: Path) -> None:
    """3504x2336 on a 512 px square covers rows 85.3 to 426.7: those and a margin are kept."""
    path = write(soft_plane(512, seed=0), (3504, 2336), tmp_path / "m.png")
    with Image.open(path) as png:
        assert png.size == (512, 346) and png.text[SIZE_KEY] == "3504x2336"


def test_a_thumbnail_is_resampled_from_the_stored_pixels(tmp_path: Path) -> None:
    plane = soft_plane(512, seed=1)
    path = write(plane, (3504, 2336), tmp_path / "m.png")
    thumbnail = read_mask(path, size=(320, 213))
    expected = np.asarray(to_source(plane, (3504, 2336)).resize((320, 213)))
    assert thumbnail.shape == (213, 320)
    assert np.abs(thumbnail.astype(int) - expected).mean() < 1


def test_a_mask_of_an_earlier_release_is_read_at_its_own_size(tmp_path: Path) -> None:
    """Written at the photograph's size, without the geometry chunks."""
    at_source = np.asarray(to_source(soft_plane(64, seed=2), (90, 60)))
    Image.fromarray(at_source).save(tmp_path / "old.png")
    assert np.array_equal(read_mask(tmp_path / "old.png"), at_source)


@pytest.mark.parametrize(
    ("size", "box"),
    [("90x60", "0,0,1000,10"), ("90", "0,0,8,8"), ("0x60", "0,0,8,8"), ("99999x99999", "0,0,8,8")],
)
def test_geometry_that_does_not_fit_the_file_is_refused(
    tmp_path: Path, size: str, box: str
) -> None:
    info = PngInfo()
    info.add_text(SIZE_KEY, size)
    info.add_text(BOX_KEY, box)
    Image.new("L", (16, 16)).save(tmp_path / "bad.png", "PNG", pnginfo=info)
    with pytest.raises(ValueError, match="mask geometry"):
        read_mask(tmp_path / "bad.png")
