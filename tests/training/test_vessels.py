"""The vessel recipe: its pixel scores on a constructed mask, its loss, the stage `mdf train`
runs, and that it learns vessels on real photographs (STARE, skipped where absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from structlog.testing import capture_logs

from mdf_model.unet import FundusUNet
from training.config import TrainConfig, VesselStage
from training.run import load_for_training
from training.trainer import Trainer
from training.vessels import (
    fit_unet,
    learn,
    predict,
    seg_example,
    segmentation_loss,
    vessel_scores,
)

STARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "stare"


def test_vessel_scores_count_every_pixel_of_every_image() -> None:
    # 20 vessel pixels among 100: 15 found (0.9), 5 missed (0.3); 5 false alarms (0.6), and
    # 75 background pixels at 0.1. Split over two images of different shapes.
    truth = np.zeros(100, dtype=bool)
    truth[:20] = True
    score = np.full(100, 0.1, dtype=np.float32)
    score[:15], score[15:20], score[20:25] = 0.9, 0.3, 0.6
    scores = vessel_scores(
        [score[:40].reshape(5, 8), score[40:]], [truth[:40].reshape(5, 8), truth[40:]]
    )
    assert scores.precision == pytest.approx(15 / 20)
    assert scores.recall == pytest.approx(15 / 20)
    assert scores.f1 == pytest.approx(0.75)
    # AUROC: each found vessel outranks all 80 background pixels, each missed one the 75 at 0.1.
    assert scores.auroc == pytest.approx((15 * 80 + 5 * 75) / (20 * 80))
    perfect = vessel_scores([truth.astype(np.float32)], [truth])
    assert (perfect.f1, perfect.auroc) == (1.0, 1.0)


def test_segmentation_loss_ignores_channels_without_a_reference_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=generator)
    targets = (torch.rand(2, 2, 8, 8, generator=generator) > 0.8).float()
    valid = torch.tensor([[True, False], [True, False]])
    other = targets.clone()
    other[:, 1] = 1 - other[:, 1]
    assert segmentation_loss(logits, targets, valid) == segmentation_loss(logits, other, valid)
    # a perfect, confident prediction costs almost nothing; its opposite costs much more
    right = segmentation_loss((targets * 2 - 1) * 20, targets, valid)
    wrong = segmentation_loss((1 - targets * 2) * 20, targets, valid)
    assert right < 0.01 and wrong > 10


def test_mdf_train_runs_the_stage_first_on_the_images_with_masks(tiny_checkpoint: Path) -> None:
    from mdf.synthetic.fundus import generate_case

    stage = VesselStage(steps=2, patch=64, batch=2)
    config = TrainConfig(epochs=1, batch_size=4, vessels=stage)
    classifier = load_for_training(tiny_checkpoint, config)
    cases = [generate_case(seed, size=96) for seed in range(2)]
    inputs = [classifier.prepare(c.image, None, seg_target=c.vessel_mask) for c in cases]
    inputs.append(classifier.prepare(cases[0].image, None))  # no mask: not in the stage
    targets = [c.label for c in cases] + [cases[0].label]
    unet = classifier.model.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}

    unmasked = inputs[2:]
    assert learn(classifier.model, unmasked, TrainConfig()) == 0  # no mask: nothing to learn
    assert learn(classifier.model, inputs, TrainConfig(vessels=VesselStage(steps=0))) == 0
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    with capture_logs() as logs:
        Trainer(classifier, config).fit(inputs, targets, inputs, targets)
    events = [entry["event"] for entry in logs]
    assert events.index("vessel_stage_done") < events.index("epoch_done")
    started = next(entry for entry in logs if entry["event"] == "vessel_stage_started")
    assert (started["images"], started["steps"]) == (2, 2)


def test_the_stage_is_on_by_default_and_left_out_of_a_sharded_run() -> None:
    assert TrainConfig().vessels.steps == 1000
    assert TrainConfig(distributed="fsdp", vessels={"patch": 64}).vessels.steps == 0
    # `mdf train --nproc` turns a one-process configuration into a sharded one.
    sharded = TrainConfig(epochs=2).replaced(distributed="fsdp")
    assert (sharded.vessels.steps, sharded.epochs) == (0, 2)
    with pytest.raises(ValueError, match="vessels"):
        TrainConfig(vessels=VesselStage(steps=2), distributed="fsdp")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """On a shared machine one torch thread trains several times faster than two, whose
    OpenMP threads wait for each other (see bench/vessels.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not STARE.is_dir(), reason=f"no STARE photographs at {STARE}")
def test_the_recipe_learns_vessels_on_real_photographs(one_thread: None) -> None:
    # Two photographs at half the real model's U-Net side (256 against 512), the tiny
    # preset's decoder: F1 0.15 untrained (nearly everything above 0.5), about 0.5 after
    # 100 steps (25 s on one thread).
    torch.manual_seed(0)
    size = 256
    examples = []
    for stem in ("im0077", "im0081"):
        image = np.asarray(Image.open(STARE / "images" / f"{stem}.png").convert("RGB"))
        mask = np.asarray(Image.open(STARE / "vessels" / f"{stem}.png").convert("L")) > 127
        examples.append(seg_example(image, mask, size, 1))
    unet = FundusUNet(classes=1, decoder_channels=(64, 32, 16, 16, 8), skip_levels=(1, 2, 3, 4))

    def f1() -> float:
        probabilities = predict(unet, examples[0].pixels[None])[0, 0].numpy()
        return vessel_scores([probabilities], [examples[0].target[0].numpy()]).f1

    untrained = f1()
    fit_unet(unet, examples, VesselStage(steps=100, patch=64, batch=8, learning_rate=3e-3))
    trained = f1()
    assert trained > untrained + 0.2, (untrained, trained)
