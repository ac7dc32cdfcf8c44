"""Fit the tiny preset on synthetic cases and write the history as JSON: in one process, or
in each process torchrun starts (then sharded with FSDP over gloo, rank 0 writing).

``python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.training.fsdp_fit
--checkpoint DIR --out FILE``; without torchrun it is the single-process reference.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from mdf.synthetic.fundus import generate_case
from training.config import EarlyStopping, TrainConfig, VesselStage
from training.distributed import under_torchrun
from training.run import load_for_training
from training.trainer import Trainer


def training_set(classifier, n: int) -> tuple[list, list[str]]:
    cases = [generate_case(seed, size=96) for seed in range(n)]
    inputs = [
        classifier.prepare(case.image, case.clinical_text, seg_target=case.vessel_mask)
        for case in cases
    ]
    return inputs, [case.label for case in cases]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accumulation", type=int, default=1)
    args = parser.parse_args()
    distributed = under_torchrun()
    if distributed:
        dist.init_process_group("gloo")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accumulation=args.grad_accumulation,
        lr_schedule="constant",
        early_stopping=EarlyStopping(patience=100),
        distributed="fsdp" if distributed else "none",
        vessels=VesselStage(steps=0),  # one process and two compare the joint loop
    )
    classifier = load_for_training(args.checkpoint, config)
    inputs, targets = training_set(classifier, args.images)
    history = Trainer(classifier, config).fit(
        inputs, targets, inputs[:4], targets[:4], state=args.state
    )
    if not distributed or dist.get_rank() == 0:
        args.out.write_text(json.dumps(asdict(history)))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
