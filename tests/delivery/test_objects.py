"""The SR and SEG of a classified study: valid (dciodvfy), filed in the source study, carrying
what was found and nothing of ours; their UIDs derived, not drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset

from db.deliveries import finished_dicom_studies
from db.models import Image, ImageStatus, Prediction
from db.session import session_factory
from delivery.destinations import destination
from delivery.objects import SEG, SR, build, plan
from delivery.results import StudyResults, study_decision, study_results
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.imaging.masks import read_mask
from mdf.settings import Settings
from scheduler.intake import ingest
from tests.delivery.classified import (
    MODEL,
    PATIENT_ID,
    PATIENT_NAME,
    classified_study,
    classify_registered,
)
from tests.delivery.dciodvfy import dciodvfy
from tests.dicom_peers import write_instances

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def results_of(settings: Settings) -> list[StudyResults]:
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as session:
        (study_id,) = finished_dicom_studies(session)
        return study_results(session, study_id)


def built(settings: Settings) -> dict[str, Dataset]:
    """Every object of the one study, by kind ("sr", "seg-1", ...)."""
    (results,) = results_of(settings)
    objects = plan(results)
    made = build(objects)
    assert all(isinstance(item, Dataset) for item in made.values()), made
    named = {}
    for item in objects:
        kind = item.planned.kind
        named[kind if kind == SR else f"{kind}-{item.instance_number}"] = made[item.uid]
    return named


def content_items(dataset: Dataset) -> list[Dataset]:
    """Every SR content item, depth first."""
    found = []
    for item in dataset.get("ContentSequence", []):
        found += [item, *content_items(item)]
    return found


def meaning(item: Dataset, keyword: str) -> str:
    return getattr(item, keyword)[0].CodeMeaning


@sqlite_only
def test_every_object_passes_dciodvfy_and_sits_in_the_source_study(
    settings: Settings, tmp_path: Path
) -> None:
    image_ids = classified_study(settings, tmp_path / "camera")
    objects = built(settings)
    assert sorted(objects) == ["seg-1", "seg-2", "seg-3", "sr"]
    sources = sorted((tmp_path / "camera").glob("*.dcm"))
    source = dcmread(sources[0])
    for kind, dataset in objects.items():
        report, errors = dciodvfy(dataset, tmp_path / f"{kind}.dcm")
        assert not errors, f"{kind}:\n{report}"
        assert dataset.StudyInstanceUID == source.StudyInstanceUID
        assert dataset.SeriesInstanceUID != source.SeriesInstanceUID  # a new series
        assert (dataset.PatientID, str(dataset.PatientName)) == (PATIENT_ID, PATIENT_NAME)
        assert dataset.StudyDate == source.StudyDate
    sr = objects["sr"]
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    referenced = {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence}
    assert referenced == {dcmread(path).SOPInstanceUID for path in sources}
    assert len(image_ids) == 3


@sqlite_only
def test_the_sr_carries_each_image_as_found_and_the_model_that_found_it(
    settings: Settings, tmp_path: Path
) -> None:
    classified_study(settings, tmp_path / "camera")
    sr = built(settings)["sr"]
    measurements = next(
        i
        for i in sr.ContentSequence
        if meaning(i, "ConceptNameCodeSequence") == "Imaging Measurements"
    )
    groups = measurements.ContentSequence
    assert len(groups) == 3
    found = []
    for group in groups:
        items = content_items(group)
        codes = {
            meaning(i, "ConceptNameCodeSequence"): meaning(i, "ConceptCodeSequence")
            for i in items
            if i.ValueType == "CODE"
            and "ConceptCodeSequence" in i
            and meaning(i, "ConceptNameCodeSequence") != "Quality Finding"
        }
        numbers = {
            meaning(i, "ConceptNameCodeSequence"): float(i.MeasuredValueSequence[0].NumericValue)
            for i in items
            if i.ValueType == "NUM"
        }
        texts = {
            meaning(i, "ConceptNameCodeSequence"): i.TextValue
            for i in items
            if i.ValueType == "TEXT"
        }
        reasons = [
            meaning(i, "ConceptCodeSequence")
            for i in items
            if i.ValueType == "CODE" and meaning(i, "ConceptNameCodeSequence") == "Quality Finding"
        ]
        images = [i for i in items if i.ValueType == "IMAGE"]
        assert len(images) == 1  # the source instance it answers
        found.append((codes, numbers, texts, reasons))
        assert texts["Algorithm Name"] == "MDF-MLLM" and texts["Algorithm Version"] == MODEL

    ungradable, referable, not_referable = found
    assert ungradable[0]["Image Quality"] == "Ungradable"
    assert "Finding" not in ungradable[0] and "Recommendation" not in ungradable[0]
    assert ungradable[3] == ["too dark", "out of focus"]
    assert "Model's generated answer" not in ungradable[2]  # not a result of an ungradable image
    assert referable[0]["Image Quality"] == "Gradable"
    assert referable[0]["Finding"] == "inherited"
    assert referable[0]["Recommendation"] == "Referable"
    assert referable[0]["Finding Site"] == "Retina"
    assert {referable[0]["Laterality"], not_referable[0]["Laterality"]} == {"Right", "Left"}
    assert referable[1]["Probability of inherited"] == pytest.approx(0.8)
    assert referable[1]["Referral probability"] == pytest.approx(0.8)
    assert referable[1]["Image Quality Rating"] == pytest.approx(0.8)
    assert "inherited retinal disease" in referable[2]["Model's generated answer"]
    assert not_referable[0]["Recommendation"] == "Not referable"
    assert not_referable[0]["Finding"] == "acquired"


def decision_in(sr: Dataset) -> dict[str, str] | None:
    """The SR's own qualitative evaluations (the study's decision), by concept name."""
    found = [
        item
        for item in sr.ContentSequence
        if meaning(item, "ConceptNameCodeSequence") == "Qualitative Evaluations"
    ]
    if not found:
        return None
    (evaluations,) = found
    return {
        meaning(item, "ConceptNameCodeSequence"): (
            meaning(item, "ConceptCodeSequence") if item.ValueType == "CODE" else item.TextValue
        )
        for item in evaluations.ContentSequence
    }


def test_the_sr_carries_the_study_decision_and_its_reason(
    settings: Settings, tmp_path: Path
) -> None:
    """The decision of screening_outcomes: refer (an eye referable), then, once every image
    is gradable and none referable, do not refer; each SR valid."""
    classified_study(settings, tmp_path / "camera")
    refer = built(settings)["sr"]
    assert decision_in(refer) == {
        "Recommendation": "Refer",
        "Reason for the decision": "left eye referable",
    }
    report, errors = dciodvfy(refer, tmp_path / "refer.dcm")
    assert not errors, report
    with session_factory(settings.resolved_database_url).begin() as session:
        session.execute(sa.update(Prediction).values(gradable=True, referable=False))
    no_refer = built(settings)["sr"]
    assert decision_in(no_refer) == {
        "Recommendation": "Do not refer",
        "Reason for the decision": "no referable finding in either eye",
    }
    report, errors = dciodvfy(no_refer, tmp_path / "no-refer.dcm")
    assert not errors, report


@sqlite_only
def test_a_study_pending_or_taken_in_over_two_nights_carries_no_decision(
    settings: Settings, tmp_path: Path
) -> None:
    """Pending, the study is not decided; over two nights the view decides each night on its
    own images, neither the whole study's decision."""
    sessions = session_factory(settings.resolved_database_url)
    first, second = tmp_path / "first", tmp_path / "second"
    files = write_instances(first, 3, study_uid="1.2.826.0.1.3680043.8.498.77")
    second.mkdir()
    last = max(files)
    last.rename(second / last.name)
    ingest(first, settings=settings, sessions=sessions, batch_name="night-1")
    image_ids = classify_registered(settings)
    with sessions.begin() as session:
        study_id = session.get(Image, image_ids[0]).study_id
        session.get(Image, image_ids[0]).status = ImageStatus.QUEUED
    with sessions() as session:
        assert study_decision(session, study_id) is None  # pending
    with sessions.begin() as session:
        session.get(Image, image_ids[0]).status = ImageStatus.DONE
    with sessions() as session:
        assert study_decision(session, study_id) is not None  # one night, decided
    ingest(second, settings=settings, sessions=sessions, batch_name="night-2")
    classify_registered(settings)
    (results,) = results_of(settings)
    assert len(results.images) == 3 and results.decision is None
    sr = plan(results)[0]
    assert decision_in(build([sr])[sr.uid]) is None


@sqlite_only
def test_the_seg_is_the_vessel_mask_on_the_source_grid(settings: Settings, tmp_path: Path) -> None:
    image_ids = classified_study(settings, tmp_path / "camera", side=80)
    seg = built(settings)["seg-1"]
    mask_file = settings.masks_dir / MODEL / f"{image_ids[0]}.vessels.png"
    expected = read_mask(mask_file) >= 128  # the model's 64 px, upsampled to the source's
    assert PILImage.open(mask_file).size == (64, 64)
    assert (seg.Rows, seg.Columns) == (80, 80)
    assert seg.SegmentationType == "BINARY"
    assert seg.SegmentSequence[0].SegmentLabel == "vessels"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MDF-MLLM", MODEL)
    assert np.array_equal(seg.pixel_array.astype(bool), expected)
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    with session_factory(settings.resolved_database_url)() as session:
        assert source.ReferencedSOPInstanceUID == session.get(Image, image_ids[0]).sop_uid


@sqlite_only
def test_a_mask_an_earlier_release_wrote_at_the_source_size_is_used_as_it_is(
    settings: Settings, tmp_path: Path
) -> None:
    image_ids = classified_study(settings, tmp_path / "camera", side=80)
    mask_file = settings.masks_dir / MODEL / f"{image_ids[0]}.vessels.png"
    at_source = read_mask(mask_file).copy()
    at_source[:10] = 255  # not what the stored one upsamples to
    PILImage.fromarray(at_source).save(mask_file)
    seg = built(settings)["seg-1"]
    assert np.array_equal(seg.pixel_array.astype(bool), at_source >= 128)


@sqlite_only
def test_nothing_of_ours_is_in_an_object(settings: Settings, tmp_path: Path) -> None:
    """No pseudonym, path, data directory or batch name: the patient and study modules of
    the sources are what a PACS needs, and all it gets of the patient."""
    classified_study(settings, tmp_path / "camera", batch="night-of-site-x")
    with session_factory(settings.resolved_database_url)() as session:
        pseudonym = session.query(Image.patient_pseudonym).first()[0]
    ours = [pseudonym, str(tmp_path), "camera", "night-of-site-x", str(settings.masks_dir)]
    for kind, dataset in built(settings).items():
        path = tmp_path / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        assert not [text for text in ours if text.encode() in data], kind


@sqlite_only
def test_uids_derive_from_the_study_the_model_version_and_the_kind(
    settings: Settings, tmp_path: Path
) -> None:
    classified_study(settings, tmp_path / "camera")
    (results,) = results_of(settings)
    first, again = plan(results), plan(results)
    assert [item.uid for item in first] == [item.uid for item in again]
    assert len({item.uid for item in first}) == len(first)
    assert [item.planned.kind for item in first] == [SR, SEG, SEG, SEG]
    other_model = StudyResults(
        results.study_id,
        results.study_uid,
        type(results.model)(results.model.id, "v2", None, "6" * 64),
        results.images,
    )
    assert not {item.uid for item in plan(other_model)} & {item.uid for item in first}
    built_sr = build(first[:1])[first[0].uid]
    assert built_sr.SOPInstanceUID == first[0].uid


@sqlite_only
def test_a_study_that_came_as_jpeg_gets_no_dicom_object(settings: Settings, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(1)
    PILImage.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(inbox / "a.jpg")
    (inbox / "manifest.csv").write_text("file,patient_id,study_id,laterality\na.jpg,P1,S1,R\n")
    sessions = session_factory(settings.resolved_database_url)
    ingest(inbox, settings=settings, sessions=sessions, batch_name="jpeg-night")
    with sessions.begin() as session:
        session.query(Image).update({"status": "done"})
    with sessions() as session:
        assert finished_dicom_studies(session) == []


@sqlite_only
def test_a_changed_source_or_a_lost_mask_is_a_reason_not_an_object(
    settings: Settings, tmp_path: Path
) -> None:
    image_ids = classified_study(settings, tmp_path / "camera")
    (results,) = results_of(settings)
    objects = plan(results)
    sources = sorted((tmp_path / "camera").glob("*.dcm"))
    write_dicom_op(sources[1], np.zeros((64, 64, 3), np.uint8), laterality="R", extension=False)
    (settings.masks_dir / MODEL / f"{image_ids[2]}.vessels.png").unlink()
    made = build(objects)
    by_kind = [made[item.uid] for item in objects]
    sr, seg1, seg2, seg3 = by_kind
    assert sr == seg2 == "not built: SourceUnreadable: source file changed since it was registered"
    assert isinstance(seg1, Dataset)
    assert seg3 == "not built: MaskUnusable: vessel mask unreadable: No such file or directory"


def test_destinations_are_checked_when_the_settings_are_read() -> None:
    ok = Settings(
        results_destinations="dicomweb:https://pacs.example.org/dicom-web,dicom:PACS@10.0.0.5:104"
    )
    assert ok.results_destinations == [
        "dicomweb:https://pacs.example.org/dicom-web",
        "dicom:PACS@10.0.0.5:104",
    ]
    for wrong in ("pacs.example.org", "dicom:PACS@host", "dicom:AN-AE-TITLE-TOO-LONG@h:104"):
        with pytest.raises(ValidationError, match="results_destinations"):
            Settings(results_destinations=wrong)


def test_a_destination_is_recorded_without_the_credentials_of_its_url() -> None:
    settings = Settings()
    stow = destination("dicomweb:https://mdf:s3cret@pacs.example.org:8443/dicom-web", settings)
    assert stow.name == "dicomweb:https://pacs.example.org:8443/dicom-web"
    assert destination("dicom:PACS@10.0.0.5:104", settings).name == "dicom:PACS@10.0.0.5:104"
