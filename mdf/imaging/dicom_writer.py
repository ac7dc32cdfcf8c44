"""Write RGB fundus frames as DICOM Ophthalmic Photography (or Secondary Capture) files.

Screening sites send fundus photographs in several transfer syntaxes; intake and its tests
need standard-conformant files in each of them, built from plain RGB arrays. The files pass
dciodvfy (dicom3tools). Lossless syntaxes are encoded by pydicom's own encoders; JPEG baseline,
which pydicom cannot encode, is encoded frame by frame with Pillow and encapsulated.

Clinical text goes into Additional Patient History (0010,21B0), the Patient Study module's
free-text history attribute (LT, up to 10240 characters), where mdf.imaging.dicom reads it.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    OphthalmicPhotography8BitImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mdf.imaging.dicom import CLINICAL_TEXT_KEYWORD

__all__ = [
    "JPEG_QUALITY",
    "LOSSLESS_SYNTAXES",
    "TRANSFER_SYNTAXES",
    "write_dicom_op",
]

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
LOSSLESS_SYNTAXES = frozenset(name for name in TRANSFER_SYNTAXES if name != "jpeg-baseline")
# SOP class UID and default Modality per `sop_class` name.
SOP_CLASSES: dict[str, tuple[UID, str]] = {
    "op": (OphthalmicPhotography8BitImageStorage, "OP"),
    "sc": (SecondaryCaptureImageStorage, "OT"),
}
JPEG_QUALITY = 95
# Image Laterality values per SOP class: the OP IOD forbids "U" (unknown).
LATERALITIES = {"op": ("L", "R", "B"), "sc": ("L", "R", "B", "U")}
UTC_SYNCHRONIZATION_UID = "1.2.840.10008.15.1.1"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _as_frames(frames: np.ndarray) -> np.ndarray:
    """Return `frames` as an N x H x W x 3 uint8 array, or raise a clear ValueError."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be HxWx3 or NxHxWx3 RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _jpeg_baseline(frames: np.ndarray) -> list[bytes]:
    """Encode each RGB frame as 8-bit baseline JPEG with 4:2:2 chroma (YBR_FULL_422)."""
    encoded = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:2")
        encoded.append(buf.getvalue())
    return encoded


def _add_op_modules(ds: Dataset) -> None:
    """Add the Ophthalmic Photography modules a generic image lacks (PS3.3 A.39.1)."""
    # Multi-frame module: frames of one OP instance are a time series.
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 0
    ds.AcquisitionContextSequence = []
    # Synchronization module, which dciodvfy requires of OP: not synchronised, UTC clock.
    ds.SynchronizationFrameOfReferenceUID = UTC_SYNCHRONIZATION_UID
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.AnatomicRegionSequence = [_code("5665001", "Retina")]
    ds.PatientEyeMovementCommanded = ""
    ds.HorizontalFieldOfView = None
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = ""
    ds.RefractiveStateSequence = []
    ds.AcquisitionDeviceTypeCodeSequence = [_code("409898007", "Fundus Camera")]
    ds.IlluminationTypeCodeSequence = []
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.ImagePathFilterTypeStackCodeSequence = []
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"


def _set_pixels(ds: Dataset, frames: np.ndarray, syntax: str, multi_frame_iod: bool) -> None:
    """Store `frames` in `ds` under the transfer syntax named `syntax`.

    A multi-frame IOD (OP) carries Number of Frames even for one frame; a single-frame one
    (SC) must not.
    """
    pixels = frames if multi_frame_iod else frames[0]
    ds.set_pixel_data(pixels, "RGB", 8, generate_instance_uid=False)
    uid = TRANSFER_SYNTAXES[syntax]
    if syntax == "jpeg-baseline":
        encoded = _jpeg_baseline(frames)
        ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = uid
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ratio = frames.nbytes / sum(len(e) for e in encoded)
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif uid.is_compressed:
        if uid == JPEG2000Lossless:
            # The OP IOD allows JPEG 2000 lossless colour only with the reversible colour
            # transform (PS3.3 C.8.17.2); SC accepts it too, so both use it.
            ds.PhotometricInterpretation = "YBR_RCT"
        ds.compress(uid, frames if len(frames) > 1 else frames[0], generate_instance_uid=False)


def write_dicom_op(
    path: str | Path,
    frames: np.ndarray,
    *,
    transfer_syntax: str = "explicit",
    patient_id: str = "ANON",
    patient_name: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    laterality: str | None = None,
    sop_class: str = "op",
    modality: str | None = None,
    clinical_text: str | None = None,
    extension: bool = True,
    acquired: datetime | None = None,
) -> Path:
    """Write `frames` (HxWx3 or NxHxWx3 uint8 RGB) as one DICOM file; return its path.

    `transfer_syntax` is a key of `TRANSFER_SYNTAXES`; `sop_class` is "op" (Ophthalmic
    Photography 8 Bit) or "sc" (Secondary Capture, single frame only). Missing UIDs are
    generated; `acquired` (default now) fills the study, content and acquisition date/times,
    so passing it and the UIDs makes the file byte-for-byte reproducible. With `extension`,
    ".dcm" is appended unless `path` already ends in it; otherwise `path` is used as given.
    `laterality` (Image Laterality) is required for OP, whose IOD has no "unknown" eye.
    `clinical_text` is stored in Additional Patient History (see `CLINICAL_TEXT_KEYWORD`).
    Photometric Interpretation is RGB, except YBR_FULL_422 for JPEG baseline and YBR_RCT
    (reversible colour transform, which the OP IOD requires) for JPEG 2000 lossless; pydicom
    decodes all of them back to RGB.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"unknown transfer_syntax {transfer_syntax!r}; valid: {sorted(TRANSFER_SYNTAXES)}"
        )
    if sop_class not in SOP_CLASSES:
        raise ValueError(f"unknown sop_class {sop_class!r}; valid: {sorted(SOP_CLASSES)}")
    allowed = LATERALITIES[sop_class]
    if laterality not in allowed and not (laterality is None and sop_class == "sc"):
        raise ValueError(
            f"laterality for sop_class {sop_class!r} must be one of {allowed}, got {laterality!r}"
        )
    arr = _as_frames(frames)
    if sop_class == "sc" and len(arr) > 1:
        raise ValueError("Secondary Capture Image Storage holds one frame; use sop_class='op'")

    path = Path(path)
    if extension and path.suffix.lower() != ".dcm":
        path = path.with_name(path.name + ".dcm")
    when = acquired or datetime.now()
    sop_class_uid, default_modality = SOP_CLASSES[sop_class]
    sop_uid = sop_uid or generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "SECONDARY"] if sop_class == "sc" else ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality or default_modality
    ds.Manufacturer = "MDF synthetic"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if clinical_text is not None:
        setattr(ds, CLINICAL_TEXT_KEYWORD, clinical_text)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    if laterality is not None:
        ds.ImageLaterality = laterality
    if sop_class == "op":
        ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
        _add_op_modules(ds)
    else:
        ds.ConversionType = "WSD"
    _set_pixels(ds, arr, transfer_syntax, multi_frame_iod=sop_class == "op")

    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
