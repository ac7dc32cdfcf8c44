"""How the U-Net learns vessels from manual masks: the recipe of `mdf train` and bench/vessels.py.

The joint loop (trainer.py) gives the U-Net one whole letterboxed image per example and a
plain BCE: every step also runs the language model, so the U-Net sees each image once per
epoch, and BCE over a mask that is 7% vessel (STARE) rewards painting everything background.
Started from random weights (no ImageNet file here), that never draws a vessel. So before the
joint loop the U-Net trains on its own (`fit_unet`):

- Resolution: the model's own input, the photograph letterboxed to ``unet_input_size``
  (`mdf_model.inputs`), which is what workers segment; at 512 a 700x605 photograph keeps the
  detail its manual mask has (the mask letterboxed and scaled back scores F1 0.993).
- Patches: random square crops, so one step covers many places in many images, with
  flips, quarter turns and jittered brightness, contrast and colour (fundus cameras differ
  in all of them; vessels have no preferred direction).
- Loss: BCE plus soft Dice over the channels that have a reference mask; Dice is about the
  vessel pixels only, so the rare class counts as much as the background.
- AdamW with a short warm-up and a cosine decay, over a number of steps or a time budget.

FiLM is not in this stage: it starts as the identity (film.py), so the U-Net alone is what
the model computes until the joint loop teaches FiLM. The input is ImageNet-normalised RGB,
exactly the workers' input, so nothing changes at inference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from sklearn import metrics

from mdf_model.inputs import unet_frame
from mdf_model.unet import IMAGENET_MEAN, IMAGENET_STD, FundusUNet
from training.config import TrainConfig, VesselStage

if TYPE_CHECKING:
    from mdf_model.inputs import PreparedInput
    from mdf_model.modeling import MDFModel

log = structlog.get_logger(__name__)

WARMUP = 0.03  # share of the stage spent raising the learning rate from zero


@dataclass(frozen=True)
class SegExample:
    """One image in the U-Net's frame: ``pixels`` (3, N, N) normalised, ``target`` (C, N, N)
    in {0, 1}, ``valid`` (C,) True for the channels with a reference mask."""

    pixels: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor


def seg_example(image: np.ndarray, mask: np.ndarray, size: int, channels: int) -> SegExample:
    """An (H, W, 3) uint8 photograph and its (H, W) or (H, W, C) mask, letterboxed to the
    U-Net's ``size`` exactly as `mdf_model.inputs.prepare_input` does for the model."""
    return SegExample(*unet_frame(image, mask, size, channels))


def _normaliser(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[None, :, None, None]
    return mean, std


def sample_batch(
    examples: Sequence[SegExample], stage: VesselStage, generator: torch.Generator
) -> SegExample:
    """``stage.batch`` augmented patches (B, 3, P, P), their targets and valid channels."""
    side = examples[0].pixels.shape[-1]
    patch = min(stage.patch, side)
    picks = torch.randint(len(examples), (stage.batch,), generator=generator).tolist()
    corners = torch.randint(side - patch + 1, (stage.batch, 2), generator=generator).tolist()
    pixels, targets = [], []
    for index, (top, left) in zip(picks, corners, strict=True):
        window = (..., slice(top, top + patch), slice(left, left + patch))
        turns = int(torch.randint(4, (1,), generator=generator))
        flip = bool(torch.randint(2, (1,), generator=generator))
        for source, out in ((examples[index].pixels, pixels), (examples[index].target, targets)):
            crop = torch.rot90(source[window], turns, dims=(-2, -1))
            out.append(crop.flip(-1) if flip else crop)
    valid = torch.stack([examples[i].valid for i in picks])
    return SegExample(_jitter(torch.stack(pixels), generator), torch.stack(targets), valid)


def _jitter(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, gamma and per-channel gain, applied in 0..1 intensity."""
    mean, std = _normaliser(pixels.device)
    image = (pixels * std + mean).clamp(0, 1)
    n = pixels.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, *shape, 1, 1), generator=generator)

    image = image ** uniform(0.7, 1.4, 1) * uniform(0.7, 1.3, 1) * uniform(0.9, 1.1, 3)
    image = image + uniform(-0.1, 0.1, 1)
    return (image.clamp(0, 1) - mean) / std


def segmentation_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean BCE plus soft Dice (over the batch, per channel) on the valid (image, channel) maps."""
    logits, targets = logits.float(), targets.float()
    weight = valid.float()[..., None, None]
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce * weight).sum() / (weight.sum() * logits[0, 0].numel())
    probabilities = torch.sigmoid(logits) * weight
    overlap = (probabilities * targets).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + (targets * weight).sum(dim=(0, 2, 3))
    dice = 1 - (2 * overlap + 1) / (total + 1)
    present = valid.any(dim=0)
    return bce + dice[present].mean()


def learning_rate_factor(progress: float) -> float:
    """Linear warm-up over the first WARMUP of the stage, then a half cosine to zero."""
    if progress < WARMUP:
        return progress / WARMUP
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


def unet_logits(unet: FundusUNet, pixels: torch.Tensor) -> torch.Tensor:
    features = unet.encode(pixels)
    return unet.decode(features, unet.skips(features))


def fit_unet(
    unet: FundusUNet,
    examples: Sequence[SegExample],
    stage: VesselStage,
    *,
    seed: int = 0,
    seconds: float | None = None,
    report: Callable[[int, float], None] | None = None,
) -> int:
    """Train ``unet`` on patches of ``examples`` for ``stage.steps`` steps or ``seconds``,
    whichever ends first (the schedule follows whichever is further along); returns the
    steps taken. ``report(step, loss)`` is called after every step."""
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        [p for p in unet.parameters() if p.requires_grad],
        lr=stage.learning_rate,
        weight_decay=stage.weight_decay,
        fused=True,  # one kernel for every parameter (see trainer.py)
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage.bf16)
    unet.train()
    started, step, progress = time.perf_counter(), 0, 0.0
    while progress < 1:
        for group in optimizer.param_groups:
            group["lr"] = stage.learning_rate * learning_rate_factor(progress)
        batch = sample_batch(examples, stage, generator)
        with autocast:
            logits = unet_logits(unet, batch.pixels.to(device))
        loss = segmentation_loss(logits, batch.target.to(device), batch.valid.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        progress = step / stage.steps
        if seconds is not None:
            progress = max(progress, (time.perf_counter() - started) / seconds)
        if report is not None:
            report(step, float(loss.detach()))
    log.info("vessel_stage_done", steps=step, seconds=round(time.perf_counter() - started, 1))
    return step


@torch.inference_mode()
def predict(unet: FundusUNet, pixels: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities (B, C, N, N) of whole U-Net inputs (B, 3, N, N), in eval mode."""
    unet.eval()
    device = next(unet.parameters()).device
    return torch.sigmoid(unet_logits(unet, pixels.to(device)).float()).cpu()


@dataclass(frozen=True)
class VesselScores:
    f1: float
    auroc: float
    precision: float
    recall: float


def vessel_scores(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], threshold: float = 0.5
) -> VesselScores:
    """Pixel scores over all the images' pixels together: F1, precision and recall of
    ``probability >= threshold``, and the AUROC of the probabilities (scikit-learn)."""
    score = np.concatenate([np.ravel(p) for p in probabilities]).astype(np.float32)
    truth = np.concatenate([np.ravel(t) for t in truths]).astype(bool)
    predicted = score >= threshold
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        truth, predicted, average="binary", zero_division=0
    )
    return VesselScores(
        f1=float(f1),
        auroc=float(metrics.roc_auc_score(truth, score)),
        precision=float(precision),
        recall=float(recall),
    )


def learn(model: MDFModel, inputs: Sequence[PreparedInput], config: TrainConfig) -> int:
    """`mdf train`'s stage: the model's U-Net on the training inputs (`PreparedInput`) that
    carry a reference mask, before the joint loop; the steps taken, 0 where ``vessels.steps``
    is 0, the model has no trainable U-Net or no input has a mask."""
    unet = model.unet
    if not config.vessels.steps or unet is None:
        return 0
    examples = [
        SegExample(item.unet_pixels, item.seg_target, item.seg_valid)
        for item in inputs
        if item.seg_target is not None and bool(item.seg_valid.any())
    ]
    if not examples or not any(parameter.requires_grad for parameter in unet.parameters()):
        return 0
    log.info("vessel_stage_started", images=len(examples), steps=config.vessels.steps)
    return fit_unet(unet, examples, config.vessels, seed=config.seed)
