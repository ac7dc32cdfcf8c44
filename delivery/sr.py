"""A study's Structured Report: TID 1500 in a Comprehensive 3D SR, one group per image.

Each image's measurement group (TID 1501) references its source instance (and frame, for
a multi-frame one), names the eye as the finding site and the model as the algorithm,
and carries what the service found: whether the image is gradable, its quality score and
reasons, and, for a gradable image, the label (Finding) with each label's probability,
the referral call with its probability, and the model's generated answer as text. Once
the study is decided (``screening_outcomes``), the report's own Qualitative Evaluations
(TID 1500 row 12, which highdicom does not build) carry the decision, refer or not, and
its reason. The document is complete but neither verified nor final (VerificationFlag
UNVERIFIED, PreliminaryFlag PRELIMINARY): a person reads it before it counts. highdicom
copies the patient and study modules of the first source instance and files the SR as a
new series in that study; its content date is that of the newest prediction, so sending
it again sends the same document.
"""

from __future__ import annotations

from collections.abc import Mapping

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from delivery import concepts
from delivery.results import Decision, ImageResult, StudyResults
from delivery.uids import ResultUids

__all__ = ["SR_SERIES_NUMBER", "build_sr"]

SR_SERIES_NUMBER = 9101
CONTAINS = RelationshipTypeValues.CONTAINS
EYES = {"R": "right eye, ", "L": "left eye, "}


def algorithm(study: StudyResults) -> AlgorithmIdentification:
    model = study.model
    parameters = [f"manifest_sha256={model.manifest_sha256}"]
    if model.preset:
        parameters.insert(0, f"preset={model.preset}")
    return AlgorithmIdentification(
        name=concepts.ALGORITHM, version=model.name, parameters=parameters
    )


def _frames(source: Dataset, image: ImageResult) -> list[int] | None:
    """The referenced frame, where the source has more than one."""
    return [image.frame + 1] if int(source.get("NumberOfFrames", 1) or 1) > 1 else None


def _evaluations(image: ImageResult) -> list[QualitativeEvaluation]:
    found = []
    if image.gradable is not None:
        quality = concepts.GRADABLE if image.gradable else concepts.UNGRADABLE
        found.append(QualitativeEvaluation(concepts.IMAGE_QUALITY, quality))
    found += [
        QualitativeEvaluation(concepts.QUALITY_FINDING, concepts.quality_reason(reason))
        for reason in image.quality_reasons
    ]
    if image.label is not None:
        found.append(QualitativeEvaluation(concepts.FINDING, concepts.label(image.label)))
    if image.referable is not None:
        call = concepts.REFERABLE if image.referable else concepts.NOT_REFERABLE
        found.append(QualitativeEvaluation(concepts.RECOMMENDATION, call))
    return found


def _measurements(image: ImageResult) -> list[Measurement]:
    values = {concepts.probability_of(name): p for name, p in sorted(image.probabilities.items())}
    if image.quality_score is not None:
        values[concepts.QUALITY_SCORE] = image.quality_score
    if image.referral_probability is not None:
        values[concepts.REFERRAL_PROBABILITY] = image.referral_probability
    return [
        Measurement(name=name, value=float(value), unit=concepts.NO_UNITS)
        for name, value in values.items()
    ]


def _group(
    image: ImageResult,
    source: Dataset,
    number: int,
    study: StudyResults,
    uids: ResultUids,
) -> MeasurementsAndQualitativeEvaluations:
    side = image.laterality or ""
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking(image.sop_uid, image.frame),
            identifier=f"{EYES.get(side, '')}image {number}",
        ),
        algorithm_id=algorithm(study),
        finding_sites=[FindingSite(concepts.RETINA, laterality=concepts.LATERALITY.get(side))],
        measurements=_measurements(image),
        qualitative_evaluations=_evaluations(image),
        source_images=[
            SourceImageForMeasurementGroup.from_source_image(source, _frames(source, image))
        ],
    )
    if image.generated_text:  # TID 1501 takes free-text evaluations beside the coded ones
        answer = TextContentItem(concepts.MODEL_ANSWER, image.generated_text, CONTAINS)
        group[0].ContentSequence.append(answer)
    return group


def _decision(decision: Decision) -> ContainerContentItem:
    """The study's decision and its reason, as the report's own qualitative evaluations."""
    container = ContainerContentItem(concepts.QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    container.ContentSequence = ContentSequence(
        [
            CodeContentItem(
                concepts.RECOMMENDATION, concepts.DECISION[decision.decision], CONTAINS
            ),
            TextContentItem(concepts.DECISION_REASON, decision.reason, CONTAINS),
        ]
    )
    return container


def build_sr(
    study: StudyResults, sources: Mapping[str, Dataset], uids: ResultUids
) -> Comprehensive3DSR:
    """The study's SR; ``sources``: each image's source instance header, by SOP Instance UID."""
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.device,
            name=concepts.ALGORITHM,
            manufacturer_name=concepts.MANUFACTURER,
            model_name=study.model.name,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=concepts.PROCEDURE,
        imaging_measurements=[
            _group(image, sources[image.sop_uid], number, study, uids)
            for number, image in enumerate(study.images, 1)
        ],
    )
    if study.decision is not None:
        report[0].ContentSequence.append(_decision(study.decision))
    newest = max(image.predicted_at for image in study.images)
    return Comprehensive3DSR(
        evidence=list({image.sop_uid: sources[image.sop_uid] for image in study.images}.values()),
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr,
        instance_number=1,
        manufacturer=concepts.MANUFACTURER,
        manufacturer_model_name=concepts.ALGORITHM,
        software_versions=concepts.SOFTWARE_VERSION,
        series_description="MDF-MLLM screening results (unverified)",
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[concepts.SCHEME_ITEM],
        content_date=newest.date(),
        content_time=newest.time(),
    )
