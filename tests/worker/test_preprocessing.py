"""A chunk's preprocessing: images prepared side by side in threads, a large JPEG decoded
reduced to what the model and the gradability check use while its masks keep its own size,
and the model's answers on reduced photographs within a stated tolerance of full decoding."""

from __future__ import annotations

import hashlib
import os
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from fake_classifier import FakeClassifier, FakeLoader, write_jpeg
from PIL import Image as PILImage
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import ClaimedImage, Failure, ReasonCode
from db.models import Prediction
from db.stored_path import to_stored
from mdf.imaging import decode_frame, decode_reduced
from mdf.imaging.masks import read_mask
from mdf.imaging.quality import QualityThresholds, assess
from worker.inference import Prepared, decode_side, preprocess
from worker.serving import Classifier

STARE = Path(
    os.environ.get("MDF_STARE_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "stare"
)
# The label probabilities of a photograph decoded reduced stay this close to those of the
# full decode (bench/decode_reduced.py measured 5e-5 at most on the 20 STARE photographs at
# 3504 x 2336, whose probabilities differ among themselves by 0.027).
PROBABILITY_TOLERANCE = 1e-3


def _claimed(paths: list[Path]) -> list[ClaimedImage]:
    """Images as a claim hands them to the worker, registered under their content's hash."""
    return [
        ClaimedImage(
            id=index,
            batch_id=1,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "0" * 64,
            source_path=to_stored(path),
            frame=0,
            clinical_text=None,
            attempts=0,
        )
        for index, path in enumerate(paths)
    ]


def _preprocess_all(
    images: list[ClaimedImage], classifier: Classifier, threads: int = 2, **limits: Any
) -> tuple[list[Prepared], dict[int, Failure]]:
    """Every batch ``preprocess`` hands out as they are ready, joined."""
    prepared: list[Prepared] = []
    failures: dict[int, Failure] = {}
    for ready, failed in preprocess(images, classifier, overlap=True, threads=threads, **limits):
        prepared += ready
        failures |= failed
    return prepared, failures


def test_a_large_jpeg_is_decoded_reduced_and_its_masks_keep_its_size(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    """The fake model resamples to 32 px and gradability wants 1024 (twice its working
    size), so a 2400 x 1800 JPEG is decoded at half its size; its masks are still 2400 x
    1800. A 1000 x 800 one is decoded whole."""
    large = write_jpeg(tmp_path / "in" / "large.jpg", 200, size=(2400, 1800))
    small = write_jpeg(tmp_path / "in" / "small.jpg", 40, size=(1000, 800))
    ids = add_files(sessions, [large, small])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    assert pipeline.run(ids).written == ids
    assert sorted(pipeline.server.current().classifier.shapes) == [(800, 1000), (900, 1200)]
    with sessions() as session:
        masks = dict(session.execute(sa.select(Prediction.image_id, Prediction.mask_path)).all())
    for image_id, size in zip(ids, [(2400, 1800), (1000, 800)], strict=True):
        for mask in masks[image_id].split(";"):
            assert read_mask(mask).shape == (size[1], size[0])


@pytest.mark.parametrize("threads", [1, 3])
def test_a_chunks_images_are_prepared_in_as_many_threads_as_asked(
    tmp_path: Path, fake_loader: FakeLoader, threads: int
) -> None:
    """Three images meet inside ``prepare`` only in a pool of three threads; in a pool of
    one, one thread prepares them all."""
    classifier = fake_loader(tmp_path / "base", vision_tiles=1)
    barrier = threading.Barrier(threads, timeout=30)
    preparing: set[int] = set()

    def meet() -> None:
        preparing.add(threading.get_ident())
        barrier.wait()

    classifier.on_prepare = meet
    paths = [write_jpeg(tmp_path / f"{i}.jpg", 100 + i) for i in range(3)]
    prepared, failures = _preprocess_all(
        _claimed(paths),
        classifier,
        threads,
        max_pixels=10_000_000,
        max_frames=1,
        max_bytes=1_000_000,
        quality=QualityThresholds(),
    )
    assert failures == {} and [item.image.id for item in prepared] == [0, 1, 2]
    assert len(preparing) == threads


def test_threads_prepare_what_one_thread_does_and_failures_stay_per_image(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The real model's inputs, prepared in the pool, equal those prepared one by one from
    the same decoding; an unreadable and a changed file fail alone, in their place."""
    from mdf_model import load_classifier

    classifier = load_classifier(tiny_checkpoint)
    quality = QualityThresholds()
    sizes = [(2400, 1600), (2100, 1600), (900, 1000), (300, 200)]  # halved, halved, whole
    paths = [write_jpeg(tmp_path / f"{i}.jpg", 60 + 40 * i, size) for i, size in enumerate(sizes)]
    changed = write_jpeg(tmp_path / "changed.jpg", 90)
    images = _claimed([*paths, tmp_path / "gone.jpg", changed])
    changed.write_bytes(b"replaced")  # after intake registered it
    prepared, failures = _preprocess_all(
        images, classifier, max_pixels=10_000_000, max_frames=1, max_bytes=10_000_000,
        quality=quality,
    )  # fmt: skip
    assert {k: v.code for k, v in failures.items()} == {
        4: ReasonCode.UNREADABLE,
        5: ReasonCode.CONTENT_CHANGED,
    }
    side = decode_side(classifier, quality)
    assert [item.image.id for item in prepared] == [0, 1, 2, 3]
    for item, path in zip(prepared, paths, strict=True):
        decoded = decode_reduced(path.read_bytes(), long_side=side)
        expected = classifier.prepare(decoded.pixels, None)
        assert item.size == decoded.size == PILImage.open(path).size
        torch.testing.assert_close(item.input.pixel_values, expected.pixel_values)
        torch.testing.assert_close(item.input.unet_pixels, expected.unet_pixels)


def _camera_jpeg(photograph: Path) -> bytes:
    """A STARE photograph as a 10 MP camera delivers it: the fundus at the frame's height,
    centred on a 3504 x 2336 black frame, JPEG at quality 95."""
    pixels = PILImage.open(photograph).convert("RGB")
    fundus = pixels.resize((round(pixels.width * 2336 / pixels.height), 2336))
    frame = PILImage.new("RGB", (3504, 2336))
    frame.paste(fundus, ((3504 - fundus.width) // 2, 0))
    buffer = BytesIO()
    frame.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def camera_photographs() -> list[bytes]:
    photographs = sorted((STARE / "images").glob("*.png"))
    if not photographs:
        pytest.skip(f"STARE photographs not found in {STARE} (set MDF_STARE_DIR)")
    return [_camera_jpeg(photograph) for photograph in photographs]


def test_gradability_of_reduced_photographs_stays_that_of_the_full_decode(
    camera_photographs: list[bytes],
) -> None:
    """On the 20 STARE photographs at the camera's size, decoded at half size (as for any
    model that resamples to at most 1024 px): a decision changes only where the full
    decode's score is within 0.05 of the threshold (one photograph, whose decision the
    camera size alone already moves: bench/decode_reduced.py), and scores move little
    (measured: 0.051 at most, 0.0045 on average; a quarter-size decode moves them 0.0074
    on average)."""
    side = decode_side(FakeClassifier(version_hash="0" * 64), QualityThresholds())
    differences = []
    for data in camera_photographs:
        full = assess(decode_frame(data))
        reduced = assess(decode_reduced(data, long_side=side).pixels)
        if abs(full.score - 0.5) > 0.05:
            assert (reduced.gradable, reduced.reasons) == (full.gradable, full.reasons)
        differences.append(abs(full.score - reduced.score))
    assert max(differences) < 0.06 and np.mean(differences) < 0.006


def test_label_probabilities_of_reduced_photographs_stay_within_tolerance(
    tiny_checkpoint: Path, camera_photographs: list[bytes]
) -> None:
    from mdf_model import load_classifier

    classifier = load_classifier(tiny_checkpoint)
    side = decode_side(classifier, QualityThresholds())
    full, reduced = [], []
    for data in camera_photographs[::4]:
        decoded = decode_reduced(data, long_side=side)
        assert decoded.pixels.shape[:2] == (1168, 1752)  # half: libjpeg's DCT scaling
        full.append(classifier.prepare(decode_frame(data), None))
        reduced.append(classifier.prepare(decoded.pixels, None))
    answers = classifier.classify_prepared(full, generate_text=False)
    reduced_answers = classifier.classify_prepared(reduced, generate_text=False)
    for answer, reduced_answer in zip(answers, reduced_answers, strict=True):
        assert reduced_answer.label == answer.label
        for label in classifier.labels:
            assert reduced_answer.probabilities[label] == pytest.approx(
                answer.probabilities[label], abs=PROBABILITY_TOLERANCE
            )
        difference = np.abs(reduced_answer.mask.astype(int) - answer.mask.astype(int))
        assert difference.mean() < 1.0  # of 0..255


def test_the_unets_reduced_filter_keeps_the_label_probabilities(
    tiny_checkpoint: Path, camera_photographs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The U-Net's square box-averaged before its bilinear filter (Pillow's reducing gap)
    against the filter alone, on the 20 STARE photographs at the camera's size: labels
    stay, probabilities move by less than 1e-4 (measured: 6e-5)."""
    from mdf_model import inputs, load_classifier

    classifier = load_classifier(tiny_checkpoint)
    side = decode_side(classifier, QualityThresholds())
    pixels = [decode_reduced(data, long_side=side).pixels for data in camera_photographs]

    def answers() -> list[Any]:
        prepared = [classifier.prepare(picture, None) for picture in pixels]
        return classifier.classify_prepared(prepared, generate_text=False)

    reduced = answers()
    monkeypatch.setattr(inputs, "UNET_REDUCING_GAP", None)
    for answer, exact in zip(reduced, answers(), strict=True):
        assert answer.label == exact.label
        for label in classifier.labels:
            assert answer.probabilities[label] == pytest.approx(
                exact.probabilities[label], abs=1e-4
            )
