"""Decoding stays within bounds: codestreams must match their header, frames are capped, and
a worker decoding a hostile file keeps its peak memory under the bound `mdf.imaging.dicom`
states (2 S + 48 max_pixels bytes above its baseline for a file of S bytes)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import jpeg_ls
import numpy as np
import openjpeg
import pydicom
import pytest
from corpus import EXPECTED, HOSTILE, build_corpus, fundus_image
from PIL import Image

from mdf.imaging import Rejection, decode_frame, probe
from mdf.imaging.codestream import codestream_size
from mdf.imaging.dicom_writer import TRANSFER_SYNTAXES, write_dicom_op

MAX_PIXELS = 1_000_000
BYTES_PER_PIXEL = 48
# Decoded once first in the measuring process, so that loading every decoder plugin and
# its first buffers is part of the baseline rather than of the measured decode.
WARM_UP = ("op_explicit.dcm", "op_rle.dcm", "op_jpeg_baseline.dcm", "op_jpeg_ls.dcm")
WARM_UP += ("op_jpeg2000.dcm", "fundus.jpg", "fundus.png", "fundus.tif")
# Decode one file in a fresh process; print its outcome and how far its peak RSS grew.
DECODE = """
import json, resource, sys, warnings
from pathlib import Path
from mdf.imaging import Rejection, decode_frame
warnings.simplefilter("ignore")
corpus, path, max_pixels = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name in sys.argv[4:]:
    decode_frame((corpus / name).read_bytes(), max_pixels=max_pixels)
data = path.read_bytes()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_frame(data, max_pixels=max_pixels)
    outcome = "ok"
except Rejection as rejection:
    outcome = str(rejection.code)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"outcome": outcome, "grew": grew}))
"""


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    build_corpus(directory)
    return directory


def decode_in_subprocess(corpus: Path, path: Path) -> tuple[str, int]:
    """(outcome, bytes the peak RSS grew by) of decoding frame 0 of `path` in a new process."""
    command = [sys.executable, "-c", DECODE, str(corpus), str(path), str(MAX_PIXELS), *WARM_UP]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    return result["outcome"], result["grew"]


def bound(path: Path) -> int:
    return 2 * path.stat().st_size + BYTES_PER_PIXEL * MAX_PIXELS


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_within_the_memory_bound(corpus_dir: Path, name: str) -> None:
    outcome, grew = decode_in_subprocess(corpus_dir, corpus_dir / name)
    assert outcome == EXPECTED[name]
    assert grew < bound(corpus_dir / name), grew


@pytest.mark.slow
@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_largest_accepted_frame_decodes_within_the_memory_bound(
    corpus_dir: Path, tmp_path: Path, syntax: str
) -> None:
    side = int(MAX_PIXELS**0.5)
    image = np.tile(fundus_image(), (11, 8, 1))[:side, :side]
    path = write_dicom_op(tmp_path / "largest", image, transfer_syntax=syntax, laterality="R")
    outcome, grew = decode_in_subprocess(corpus_dir, path)
    assert outcome == "ok"
    assert grew < bound(path), grew


def test_codestream_sizes_are_read_from_every_encoder() -> None:
    image = fundus_image()
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, "JPEG")
    j2k = bytes(openjpeg.encode(image, codec_format=0))
    for codestream in (jpeg.getvalue(), bytes(jpeg_ls.encode(image)), j2k):
        assert codestream_size(codestream) == (128, 96, 3)
        # A header cut short anywhere, or not a codestream at all, gives no size.
        assert [codestream_size(codestream[:cut]) for cut in range(12)] == [None] * 12
    assert codestream_size(b"\x00" * 64) is None


def test_frame_cap_is_a_keyword(corpus_dir: Path) -> None:
    path = corpus_dir / "op_65_frames.dcm"
    assert len(probe(path, max_frames=65).images) == 65
    assert decode_frame(path.read_bytes(), 64, max_frames=65).shape == (96, 128, 3)
    with pytest.raises(Rejection) as caught:
        decode_frame(path.read_bytes(), 0)
    assert caught.value.code == "too_many_frames"


def test_codestream_is_checked_against_the_pixel_cap(corpus_dir: Path) -> None:
    with pytest.raises(Rejection) as caught:
        probe(corpus_dir / "op_jpeg2000.dcm", max_pixels=128 * 96 - 1)
    assert caught.value.code == "too_large"  # the header already says too large
    data = (corpus_dir / "op_jpeg_bomb.dcm").read_bytes()
    with pytest.raises(Rejection, match="60000x60000") as caught:
        decode_frame(data, max_pixels=10**10)
    assert caught.value.code == "codestream_mismatch"


@pytest.mark.slow
def test_a_deflate_bomb_is_refused_before_it_is_inflated(corpus_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(corpus_dir / "op_deflated.dcm")
    # Zeros deflate about 1000:1: 40 MB of them inflate past 24 bytes a pixel of 1 MP.
    ds.add_new(0x00091010, "OB", bytes(40_000_000))
    ds.private_block(0x0009, "MDF TEST", create=True)
    bomb = tmp_path / "deflate_bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 1_000_000
    outcome, grew = decode_in_subprocess(corpus_dir, bomb)
    assert outcome == "too_large"
    assert grew < bound(bomb), grew


def test_a_meta_element_of_unknown_vr_is_a_rejection_not_a_crash(corpus_dir: Path) -> None:
    """Found by the fuzz run: pydicom converts a meta element when it is first read, so an
    unknown VR on the transfer syntax raised from the deflate check instead of being refused."""
    data = (corpus_dir / "op_deflated.dcm").read_bytes()
    at = data.index(b"\x02\x00\x10\x00UI")  # (0002,0010) Transfer Syntax UID, explicit VR
    mangled = data[: at + 4] + b"TI" + data[at + 6 :]
    with pytest.raises(Rejection):
        probe(Path("mangled.dcm"), data=mangled, max_pixels=1_000_000)
