"""A synthetic delivery: a folder tree of fundus photographs as a screening site sends it.

`write_dataset` lays out JPEG and DICOM OP files under <source>/<date>/<patient>/ with one
manifest.csv (scheduler.manifest's format) at the top, so intake, the demo and the
benchmarks ingest it as a real night. Masks are not images to classify: they go to a folder
beside the delivery, which the manifest does not list, and its masks.csv maps each image to
its masks.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from mdf.imaging.dicom_writer import TRANSFER_SYNTAXES, write_dicom_op
from mdf.synthetic.fundus import DISEASES, SyntheticCase, generate_case
from scheduler.manifest import COLUMNS, MANIFEST_NAME

__all__ = ["MASKS_COLUMNS", "MASKS_NAME", "default_masks_dir", "write_dataset"]

# masks.csv is a labels file for `mdf labels import`: paths relative to its folder, and
# `mask` lists the segmentation channels' PNGs (vessels, lesions) separated by ";".
MASKS_NAME = "masks.csv"
MASKS_COLUMNS = ("image", "label", "mask", "source")
JPEG_QUALITY = 95

Row = dict[str, str]


def default_masks_dir(out_dir: Path) -> Path:
    """`<out_dir>-masks`, beside the delivery: an inbox holds only what a site delivers."""
    return out_dir.with_name(f"{out_dir.name}-masks")


def _uid(*parts: object) -> str:
    """A UID derived from `parts`, so rewriting a dataset gives the same UIDs."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dataset(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 512,
    dicom_fraction: float = 0.5,
    transfer_syntaxes: Sequence[str] = ("explicit", "jpeg-baseline"),
    with_text: bool | float = True,
    sources: Sequence[str] = ("synthetic",),
    write_masks: bool = True,
    masks_dir: str | Path | None = None,
    images_per_patient: int = 2,
    confound: float = 0.0,
    text_signal: float = 1.0,
) -> Path:
    """Write `n` images as a site would deliver them, plus manifest.csv; return `out_dir`.

    Patients alternate between acquired and inherited (balanced labels); each patient has
    `images_per_patient` images, right and left eye in turn, a new study every two images.
    Images go to <source>/<date>/<patient_id>/ as JPEG (quality 95) or, with probability
    `dicom_fraction`, DICOM OP in one of `transfer_syntaxes` (half of them named IMnnnn
    without extension, as many PACS exports are). manifest.csv lists every image in
    scheduler.manifest's COLUMNS, paths relative to `out_dir`.

    `with_text` is whether (or, as a float, how often) a patient has clinical text.
    `confound` is the fraction of patients whose source and text presence follow their
    label, as in public data where only the inherited-disease atlas has text: acquired
    cases then come from `sources[0]` without text, inherited from `sources[-1]` with text.

    With `write_masks`, vessel and lesion masks are written as PNG under `masks_dir`
    (default: `default_masks_dir`), mirroring the image paths, suffixed _vessel.png and
    _lesion.png, and listed in `masks_dir`/masks.csv, a labels file for `mdf labels import`
    (MASKS_COLUMNS). Same arguments give identical files.
    """
    if n < 0 or images_per_patient < 1:
        raise ValueError("n must be >= 0 and images_per_patient >= 1")
    if not sources:
        raise ValueError("sources must name at least one source")
    for name, value in (
        ("dicom_fraction", dicom_fraction),
        ("with_text", float(with_text)),
        ("confound", confound),
        ("text_signal", text_signal),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    unknown = set(transfer_syntaxes) - set(TRANSFER_SYNTAXES)
    if unknown or not transfer_syntaxes:
        raise ValueError(f"transfer_syntaxes must be from {sorted(TRANSFER_SYNTAXES)}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask_root = Path(masks_dir) if masks_dir is not None else default_masks_dir(out)
    rng = np.random.default_rng(seed)
    labels = sorted(DISEASES)
    manifest: list[Row] = []
    masks: list[Row] = []
    for p in range(math.ceil(n / images_per_patient)):
        label = labels[p % len(labels)]
        if rng.random() < confound:
            source = sources[-1] if label == "inherited" else sources[0]
            has_text = label == "inherited"
        else:
            source = sources[rng.integers(len(sources))]
            has_text = bool(rng.random() < float(with_text))
        first_visit = date(2023, 1, 2) + timedelta(days=int(rng.integers(0, 700)))
        patient_rng = np.random.default_rng(rng.integers(2**63))
        first: SyntheticCase | None = None
        for k in range(min(images_per_patient, n - p * images_per_patient)):
            case = generate_case(
                patient_rng,
                label=label,
                disease=first.disease if first else None,
                size=size,
                with_text=has_text and first is None,
                laterality="RL"[k % 2],
                text_signal=text_signal,
            )
            first = first or case
            patient_id = f"S{seed}P{p + 1:06d}"
            case = replace(
                case,
                patient_id=patient_id,
                study_id=f"{patient_id}-{k // 2 + 1}",
                clinical_text=first.clinical_text,
                source=source,
            )
            when = datetime.combine(first_visit, datetime.min.time()) + timedelta(
                days=91 * (k // 2), minutes=int(rng.integers(8 * 60, 17 * 60))
            )
            folder = out / source / when.date().isoformat() / patient_id
            if rng.random() < dicom_fraction:
                syntax = transfer_syntaxes[rng.integers(len(transfer_syntaxes))]
                name = f"IM{k + 1:04d}" if rng.random() < 0.5 else f"{case.laterality}_{k + 1}.dcm"
                path = _write_dicom(folder / name, case, syntax, when, seed)
            else:
                path = folder / f"{case.laterality}_{k + 1}.jpg"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(case.image).save(path, quality=JPEG_QUALITY)
            rel = path.relative_to(out).as_posix()
            manifest.append(
                {
                    "file": rel,
                    "patient_id": patient_id,
                    "study_id": case.study_id,
                    "laterality": case.laterality,
                    "clinical_text": case.clinical_text or "",
                    "label": case.label,
                    "source": source,
                }
            )
            if write_masks:
                masks.append(
                    {
                        "image": Path(os.path.relpath(path, mask_root)).as_posix(),
                        "label": case.label,
                        "mask": ";".join(_write_masks(mask_root, rel, case)),
                        "source": source,
                    }
                )

    _write_csv(out / MANIFEST_NAME, COLUMNS, manifest)
    if write_masks:
        _write_csv(mask_root / MASKS_NAME, MASKS_COLUMNS, masks)
    return out


def _write_dicom(path: Path, case: SyntheticCase, syntax: str, when: datetime, seed: int) -> Path:
    """Write `case` as DICOM OP with UIDs derived from the seed and ids (reproducible)."""
    study = (seed, case.patient_id, case.study_id)
    return write_dicom_op(
        path,
        case.image,
        transfer_syntax=syntax,
        patient_id=case.patient_id,
        patient_name=f"SYNTHETIC^{case.patient_id}",
        study_uid=_uid(*study),
        series_uid=_uid(*study, case.laterality),
        sop_uid=_uid(*study, path.name),
        laterality=case.laterality,
        clinical_text=case.clinical_text,
        extension=False,
        acquired=when,
    )


def _write_masks(root: Path, rel: str, case: SyntheticCase) -> tuple[str, str]:
    """Save the masks under `root` mirroring the image path; return their relative paths."""
    stem = Path(rel).with_suffix("")
    paths = []
    for kind, mask in (("vessel", case.vessel_mask), ("lesion", case.lesion_mask)):
        path = stem.with_name(f"{stem.name}_{kind}.png")
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / path)
        paths.append(path.as_posix())
    return paths[0], paths[1]


def _write_csv(path: Path, header: Sequence[str], rows: list[Row]) -> None:
    """Rows by column name, so they follow `header` whatever its order."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
