"""The paper's Table 1 on synthetic data: baseline MLLM, frozen U-Net, frozen MLLM, both unfrozen.

One command, no database: a tiny checkpoint and a labelled synthetic history are written to a
temporary folder and split by patient once; every variant then trains from that checkpoint on
the same patients for the same number of epochs and is scored by label scoring on the same
held-out patients (see training/ablation.py). ``--with-text 0`` (the default) trains and
scores on the images alone, where the fusion has to show what it adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mdf.synthetic.examples import synthetic_split
from mdf_model.tiny import build_tiny_checkpoint
from training.ablation import TABLE_VARIANTS, format_table, run_ablation
from training.config import VARIANTS, TrainConfig, VesselStage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--with-text", type=int, choices=(0, 1), default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(TABLE_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mdf-ablation-") as scratch:
        start = build_tiny_checkpoint(Path(scratch) / "tiny", seed=args.seed)
        split = synthetic_split(
            scratch, args.images, seed=args.seed, size=args.size, with_text=bool(args.with_text)
        )
        config = TrainConfig(
            checkpoint=start,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            vessels=VesselStage(steps=0),  # the variants differ in the joint loop
        )
        rows = run_ablation(start, split.train, split.evaluation, config, args.variants)

    print(format_table(rows))
    print(f"seconds: {time.perf_counter() - began:.1f}")
    print(f"train_images: {len(split.train)}")
    print(f"test_images: {len(split.evaluation)}")
    for row in rows:
        e = row.evaluation
        auroc = "-" if e.auroc is None else f"{e.auroc:.3f}"
        print(f"{row.variant}_accuracy: {e.accuracy:.3f}")
        print(f"{row.variant}_macro_f1: {e.macro_f1:.3f}")
        print(f"{row.variant}_auroc: {auroc}")


if __name__ == "__main__":
    main()
