"""A study's result objects: planned from the database alone, built from the sources and masks.

Planning gives each object its kind, UID and what it answers: one SR per study group
(DICOM study and model version) and one SEG per source instance whose images have a
vessel mask. So delivery rows are written and claimed before anything is read from disk,
and a study already delivered costs one query. Building reads each source instance once
and returns each object, or why it could not be built (its source changed or gone, a
mask unreadable, highdicom refusing an input): a reason to record, never a stopped
delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

from pydicom.dataset import Dataset

from db.deliveries import PlannedObject
from delivery.results import ImageResult, StudyResults
from delivery.seg import build_seg, vessel_mask_path
from delivery.sources import read_source
from delivery.sr import build_sr
from delivery.uids import ResultUids
from mdf.logs import summarise_error

__all__ = ["SEG", "SR", "ResultObject", "build", "plan"]

SR = "sr"
SEG = "seg"


@dataclass(frozen=True)
class ResultObject:
    planned: PlannedObject
    results: StudyResults
    frames: tuple[ImageResult, ...]  # a SEG's source instance, frame by frame; () for an SR
    instance_number: int

    @property
    def uid(self) -> str:
        return self.planned.sop_instance_uid

    @property
    def uids(self) -> ResultUids:
        return ResultUids(self.results.study_uid, self.results.model.manifest_sha256)


def _object(
    kind: str, uid: str, results: StudyResults, frames: tuple[ImageResult, ...], number: int
) -> ResultObject:
    image_id = frames[0].image_id if frames else None
    planned = PlannedObject(kind, uid, results.study_id, results.model.id, image_id)
    return ResultObject(planned, results, frames, number)


def plan(results: StudyResults) -> list[ResultObject]:
    """The group's SR, then a SEG per source instance with a vessel mask, in image order."""
    uids = ResultUids(results.study_uid, results.model.manifest_sha256)
    planned = [_object(SR, uids.sr, results, (), 1)]
    by_source = groupby(
        sorted(results.images, key=lambda i: (i.sop_uid, i.frame)), key=lambda i: i.sop_uid
    )
    instances = sorted((tuple(frames) for _, frames in by_source), key=lambda f: f[0].image_id)
    segmented = [frames for frames in instances if any(map(vessel_mask_path, frames))]
    planned += [
        _object(SEG, uids.seg(frames[0].sop_uid), results, frames, number)
        for number, frames in enumerate(segmented, 1)
    ]
    return planned


class _Sources:
    """Each source instance read once per build, or the reason it could not be."""

    def __init__(self) -> None:
        self._read: dict[str, Dataset | Exception] = {}

    def __call__(self, image: ImageResult) -> Dataset:
        if image.sop_uid not in self._read:
            try:
                self._read[image.sop_uid] = read_source(image.source, image.sha256)
            except Exception as error:
                self._read[image.sop_uid] = error
        found = self._read[image.sop_uid]
        if isinstance(found, Exception):
            raise found
        return found


def _build_one(item: ResultObject, source: Callable[[ImageResult], Dataset]) -> Dataset:
    if item.planned.kind == SR:
        images = item.results.images
        return build_sr(item.results, {image.sop_uid: source(image) for image in images}, item.uids)
    frames = item.frames
    return build_seg(frames, source(frames[0]), item.results, item.uids, item.instance_number)


def build(objects: Sequence[ResultObject]) -> dict[str, Dataset | str]:
    """Each object by UID, or why it could not be built (one line, no value of the sources)."""
    sources = _Sources()
    built: dict[str, Dataset | str] = {}
    for item in objects:
        try:
            built[item.uid] = _build_one(item, sources)
        except Exception as error:  # recorded with the object; the others go on
            built[item.uid] = f"not built: {summarise_error(error)}"
    return built
