"""A source instance's vessel segmentation: a binary SEG on the photograph's own pixel grid.

The worker keeps each mask channel as a PNG of probabilities (0 to 255) at the model's
resolution with the photograph's size and place in it (``worker/masks.py``,
``<image id>.<channel>.png``), which ``mdf.imaging.masks.read_mask`` upsamples to the
photograph's width and height (a mask of an earlier release is at that size already). The SEG
carries the ``vessels`` channel, thresholded at one half, as one binary segment (blood
vessel of the retina, found by the model), one frame per source frame: a viewer lays it
over the photograph without resampling. A source frame without a mask gets an empty
frame; a source without any gets no SEG.

highdicom counts Ophthalmic Photography as a multi-frame image (it carries Number of
Frames even for one frame) and so takes the pixel measures from the source's Shared
Functional Groups, which a photograph has no reason to hold: the in-memory copy gets one,
with the source's Pixel Spacing where it has one, and an empty one is dropped from the
SEG again. Patient Orientation (General Image, Type 2C without an Image Orientation) is
written empty: nobody knows it of a fundus photograph.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from highdicom import AlgorithmIdentificationSequence
from highdicom.seg import (
    SegmentAlgorithmTypeValues,
    Segmentation,
    SegmentationTypeValues,
    SegmentDescription,
)
from pydicom.dataset import Dataset

from delivery import concepts
from delivery.results import ImageResult, StudyResults
from delivery.uids import ResultUids
from mdf.imaging.masks import read_mask

__all__ = ["SEG_SERIES_NUMBER", "VESSELS", "MaskUnusable", "build_seg", "vessel_mask_path"]

VESSELS = "vessels"
SEG_SERIES_NUMBER = 9102
#: Probabilities from one half (as 0..255) are vessel.
THRESHOLD = 128


class MaskUnusable(Exception):
    """A stored mask cannot be read or does not fit its source; the message holds no path."""


def vessel_mask_path(image: ImageResult) -> str | None:
    """The image's stored vessel channel, if the model made one."""
    suffix = f".{VESSELS}.png"
    return next((str(path) for path in image.masks if path.name.endswith(suffix)), None)


def _vessels(image: ImageResult, rows: int, columns: int) -> np.ndarray:
    path = vessel_mask_path(image)
    if path is None:
        return np.zeros((rows, columns), dtype=bool)
    try:
        plane = read_mask(path)
    except OSError as error:
        why = error.strerror or type(error).__name__
        raise MaskUnusable(f"vessel mask unreadable: {why}") from None
    except ValueError as error:  # its geometry: the message names no path
        raise MaskUnusable(f"vessel mask unusable: {error}") from None
    if plane.shape != (rows, columns):
        raise MaskUnusable(
            f"vessel mask is {plane.shape[1]}x{plane.shape[0]}, its source {columns}x{rows}"
        )
    return plane >= THRESHOLD


def _with_pixel_measures(source: Dataset) -> Dataset:
    measures = Dataset()
    if "PixelSpacing" in source:
        measures.PixelSpacing = source.PixelSpacing
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    adapted = copy.deepcopy(source)
    adapted.SharedFunctionalGroupsSequence = [shared]
    return adapted


def build_seg(
    frames: Sequence[ImageResult],
    source: Dataset,
    study: StudyResults,
    uids: ResultUids,
    instance_number: int,
) -> Segmentation:
    """The SEG of one source instance, from its frames' images (frame order)."""
    rows, columns = int(source.Rows), int(source.Columns)
    count = int(source.get("NumberOfFrames", 1) or 1)
    pixels = np.zeros((count, rows, columns), dtype=bool)
    for image in frames:
        pixels[image.frame] = _vessels(image, rows, columns)
    model = study.model
    newest = max(image.predicted_at for image in frames)  # the same object when sent again
    segment = SegmentDescription(
        segment_number=1,
        segment_label=VESSELS,
        segmented_property_category=concepts.ANATOMICAL_STRUCTURE,
        segmented_property_type=concepts.BLOOD_VESSEL,
        anatomic_regions=[concepts.RETINA],
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=AlgorithmIdentificationSequence(
            name=concepts.ALGORITHM,
            family=concepts.ARTIFICIAL_INTELLIGENCE,
            version=model.name,
            parameters={"threshold": "0.5", "manifest_sha256": model.manifest_sha256},
        ),
    )
    seg = Segmentation(
        source_images=[_with_pixel_measures(source)],
        pixel_array=pixels,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=uids.seg_series,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.seg(str(source.SOPInstanceUID)),
        instance_number=instance_number,
        manufacturer=concepts.MANUFACTURER,
        manufacturer_model_name=concepts.ALGORITHM,
        software_versions=concepts.SOFTWARE_VERSION,
        device_serial_number=model.manifest_sha256[:16],
        series_description="MDF-MLLM vessel segmentation (unverified)",
        content_label="VESSELS",
        content_description="Retinal vessels found by MDF-MLLM",
        omit_empty_frames=False,  # a frame per source frame, found vessels or not
        content_date=newest.date(),
        content_time=newest.time(),
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if not shared.PixelMeasuresSequence[0]:
        del shared.PixelMeasuresSequence
    seg.PatientOrientation = ""
    return seg
