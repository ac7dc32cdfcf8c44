"""The ablation table: four variants on one split, each freezing what it says."""

from __future__ import annotations

from pathlib import Path

import torch

from mdf.synthetic.examples import synthetic_split
from training.ablation import TABLE_VARIANTS, format_table, run_ablation
from training.config import TrainConfig, VesselStage
from training.run import load_for_training


def _unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[name], after[name]) for name in before)


def test_each_variant_trains_on_one_split_and_frozen_parts_stay_as_they_were(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    split = synthetic_split(tmp_path, 16, size=64, seed=3)
    config = TrainConfig(
        checkpoint=tiny_checkpoint, epochs=1, batch_size=8, vessels=VesselStage(steps=0)
    )
    start = load_for_training(tiny_checkpoint, config).model
    unet = {k: v.clone() for k, v in start.unet.state_dict().items()}
    base = {k: v.clone() for k, v in start.base.state_dict().items()}

    rows = {
        row.variant: row
        for row in run_ablation(tiny_checkpoint, split.train, split.evaluation, config)
    }

    assert list(rows) == list(TABLE_VARIANTS)
    assert all(row.evaluation.n == len(split.evaluation) for row in rows.values())
    models = {variant: row.classifier.model for variant, row in rows.items()}
    assert models["baseline"].unet is None and models["baseline"].fusion is None
    assert not _unchanged(base, models["baseline"].base.state_dict())
    assert _unchanged(unet, models["frozen_unet"].unet.state_dict())
    assert not _unchanged(base, models["frozen_unet"].base.state_dict())
    assert _unchanged(base, models["frozen_mllm"].base.state_dict())
    assert not _unchanged(unet, models["frozen_mllm"].unet.state_dict())
    assert not _unchanged(unet, models["full"].unet.state_dict())
    assert not _unchanged(base, models["full"].base.state_dict())

    table = format_table(list(rows.values())).splitlines()
    assert table[0].split()[:4] == ["variant", "accuracy", "macro_f1", "auroc"]
    assert [line.split()[0] for line in table[1:]] == list(TABLE_VARIANTS)
