"""A written synthetic delivery read back as labelled training examples, without a database.

Training runs and benchmarks that skip intake use these; intake tests ingest the delivery.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mdf.synthetic.delivery import MASKS_NAME, default_masks_dir, write_dataset
from scheduler.manifest import MANIFEST_NAME
from training.splits import Example, Split, split_by_patient

__all__ = ["read_examples", "synthetic_split"]


def read_examples(out_dir: str | Path, masks_dir: str | Path | None = None) -> list[Example]:
    """The labelled examples of a folder written by `write_dataset`, without a database.

    Ids are row numbers of manifest.csv; masks come from masks.csv when there is one.
    """
    out = Path(out_dir)
    mask_root = Path(masks_dir) if masks_dir is not None else default_masks_dir(out)
    masks: dict[Path, str] = {}
    if (mask_root / MASKS_NAME).is_file():
        with (mask_root / MASKS_NAME).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                paths = (str(mask_root / p) for p in row["mask"].split(";"))
                masks[(mask_root / row["image"]).resolve()] = ";".join(paths)
    with (out / MANIFEST_NAME).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        Example(
            image_id=i,
            path=str(out / row["file"]),
            frame=0,
            label=row["label"],
            patient=row["patient_id"],
            source=row["source"],
            clinical_text=row["clinical_text"] or None,
            mask_path=masks.get((out / row["file"]).resolve()),
        )
        for i, row in enumerate(rows)
    ]


def synthetic_split(
    directory: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 256,
    with_text: bool = True,
    eval_fraction: float = 0.25,
) -> Split:
    """Write `n` labelled images (JPEG and DICOM, with masks) and split them by patient."""
    out = write_dataset(Path(directory) / "images", n, seed=seed, size=size, with_text=with_text)
    return split_by_patient(read_examples(out), eval_fraction=eval_fraction, seed=seed)
