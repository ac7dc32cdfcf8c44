"""Files a site delivers by mistake, for demos and end-to-end tests of intake's rejections.

A real night holds more than fundus photographs: an upload that stopped at zero bytes, a
JPEG cut off in transfer, a referral letter, a red-free (grayscale) photograph, a CT
slice sent to the wrong inbox. `write_bad_files` adds one of each under `misc/`; each
must end as a rejected image with the code `BAD_FILES` gives it. Same arguments give
identical files.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

from PIL import Image

from mdf.imaging.dicom_writer import write_dicom_op
from mdf.synthetic.fundus import generate_case

__all__ = ["BAD_FILES", "write_bad_files"]

#: Path under the delivered folder -> the rejection code intake must give it.
BAD_FILES: dict[str, str] = {
    "misc/empty.jpg": "empty_file",
    "misc/cut-off.jpg": "truncated",
    "misc/referral-letter.txt": "not_an_image",
    "misc/red-free.png": "grayscale",
    "misc/ct-slice.dcm": "unsupported_modality",
}

LETTER = "Referral: please grade the attached fundus photographs (synthetic letter).\n"
#: Fixed UIDs and date keep the DICOM file byte-for-byte reproducible.
CT_UID_ROOT = "1.2.826.0.1.3680043.10.1380"


def write_bad_files(folder: Path, *, size: int = 256, seed: int = 0) -> dict[Path, str]:
    """Write every file of `BAD_FILES` under `folder`; return each path with its code."""
    photo = generate_case(seed, size=size, with_text=False).image
    encoded = io.BytesIO()
    Image.fromarray(photo).save(encoded, format="JPEG", quality=90)
    paths = {folder / name: code for name, code in BAD_FILES.items()}
    misc = folder / "misc"
    misc.mkdir(parents=True, exist_ok=True)
    (misc / "empty.jpg").write_bytes(b"")
    (misc / "cut-off.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    (misc / "referral-letter.txt").write_text(LETTER)
    Image.fromarray(photo).convert("L").save(misc / "red-free.png")
    write_dicom_op(
        misc / "ct-slice.dcm",
        photo,
        sop_class="sc",
        modality="CT",
        study_uid=f"{CT_UID_ROOT}.{seed}.1",
        series_uid=f"{CT_UID_ROOT}.{seed}.2",
        sop_uid=f"{CT_UID_ROOT}.{seed}.3",
        laterality="U",
        acquired=datetime(2024, 1, 2, 9, 30),
    )
    return paths
