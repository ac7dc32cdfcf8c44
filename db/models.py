"""The schema: SQLAlchemy 2 typed models.

Tables follow the life of a photograph: a ``Batch`` (one night's delivery) holds
``Image`` rows (one per file, or per frame of a multi-frame DICOM) grouped in
``Study`` rows; each image gets ``Prediction`` rows, one per ``ModelVersion``.
``TrainingRun`` and ``Promotion`` record how model versions were made and chosen.
``Delivery`` rows follow each result object sent back to a PACS (``delivery/``).
Analysts read the ``study_results``, ``study_rollup`` and ``screening_outcomes`` views
(see the migrations).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


class ImageStatus(enum.StrEnum):
    """The column type of an image's status; ``db.lifecycle`` says what each means."""

    REGISTERED = "registered"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


class Batch(Base):
    """One delivery: an ingest of a folder, named by the operator or after the night."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    files_seen: Mapped[int] = mapped_column(default=0)

    images: Mapped[list[Image]] = relationship(back_populates="batch")


class Study(Base):
    """A patient's visit: the DICOM StudyInstanceUID, or the manifest's study id."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_key: Mapped[str] = mapped_column(String(200), unique=True)
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    images: Mapped[list[Image]] = relationship(back_populates="study")


class Image(Base):
    """One photograph to classify, identified by its content (sha256) and frame number."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("sha256", "frame", name="uq_images_content"),
        Index("ix_images_status_changed", "status", "status_changed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(default=0)
    source_path: Mapped[str] = mapped_column(Text)
    file_kind: Mapped[str | None] = mapped_column(String(16))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None]
    height: Mapped[int | None]
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    laterality: Mapped[str | None] = mapped_column(String(1))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    clinical_text: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(64))  # ground truth, when known
    # Ground-truth segmentation: one PNG per channel of the model's head, ";"-separated.
    mask_path: Mapped[str | None] = mapped_column(Text)
    data_source: Mapped[str | None] = mapped_column(String(100))  # dataset or site

    status: Mapped[ImageStatus] = mapped_column(
        Enum(ImageStatus, name="image_status", values_callable=lambda e: [m.value for m in e]),
        default=ImageStatus.REGISTERED,
    )
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # The claim of the worker processing it, and when that claim lapses unless renewed.
    claim_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    batch: Mapped[Batch] = relationship(back_populates="images")
    study: Mapped[Study | None] = relationship(back_populates="images")
    paths: Mapped[list[ImagePath]] = relationship(back_populates="image")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="image")


class ImagePath(Base):
    """Every path a file was seen under: the same pixels under two names are one image."""

    __tablename__ = "image_paths"
    __table_args__ = (UniqueConstraint("image_id", "path", name="uq_image_paths"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    path: Mapped[str] = mapped_column(Text, index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="paths")
    batch: Mapped[Batch] = relationship()


class ModelVersion(Base):
    """A checkpoint directory the workers can serve, identified by its manifest hash."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one promoted version, whatever two promoters do at once.
        Index(
            "uq_model_versions_promoted",
            "is_promoted",
            unique=True,
            sqlite_where=text("is_promoted"),
            postgresql_where=text("is_promoted"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    preset: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any] | None]
    # Referral thresholds chosen in training: {"target_sensitivity": 0.9, "labels": {label:
    # {"threshold", "sensitivity", "specificity", "positives", "negatives"}}}; NULL: none.
    referral: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]
    is_promoted: Mapped[bool] = mapped_column(default=False)


class Prediction(Base):
    """A model version's answer for one image; at most one per (image, version)."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id", name="uq_predictions_image_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # The model's answer; NULL for an ungradable image the model refuses (a black frame).
    label: Mapped[str | None] = mapped_column(String(64))
    probability: Mapped[float | None]
    # None is SQL NULL here, not JSON null
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    )
    generated_text: Mapped[str | None] = mapped_column(Text)
    text_label: Mapped[str | None] = mapped_column(String(64))
    text_agrees: Mapped[bool | None]
    mask_path: Mapped[str | None] = mapped_column(Text)
    # The image's gradability (mdf.imaging.quality); NULL for predictions made before it
    # was assessed. quality_reason: comma-separated QualityReason values, NULL if gradable.
    gradable: Mapped[bool | None]
    quality_score: Mapped[float | None]
    quality_reason: Mapped[str | None] = mapped_column(Text)
    # Whether a referable label reached its threshold: NULL when ungradable or when the
    # model has no referable label; referral_probability, the highest such label's.
    referable: Mapped[bool | None]
    referral_probability: Mapped[float | None]
    preprocess_ms: Mapped[float | None]
    inference_ms: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")
    model_version: Mapped[ModelVersion] = relationship()


class TrainingRun(Base):
    """One fine-tuning and evaluation; its challenger may be promoted."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    challenger_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    champion_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    metrics: Mapped[dict[str, Any] | None]
    report_path: Mapped[str | None] = mapped_column(Text)
    promoted: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class Promotion(Base):
    """Every promotion or rollback, with the metrics and reason behind it."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback
    reason: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None]
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryStatus(enum.StrEnum):
    """Where a result object stands with one destination: to be sent, sent, or its last
    attempt failed (it is tried again until the retries run out, then by hand)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Delivery(Base):
    """One result object (a study's SR, a source instance's SEG) for one destination.

    The object's SOP Instance UID derives from its study, model version and kind, so one
    object sent twice replaces itself at the destination; one row per (object, destination)
    counts every attempt. ``reason`` is why the last failed attempt failed, kept once a later
    attempt succeeds. A sender holds the row while ``lease_expires_at`` is in the future.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_deliveries_object"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # The (first frame's) image a SEG segments; NULL for the study's SR.
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    kind: Mapped[str] = mapped_column(String(8))  # sr | seg
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(300))  # never a password
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(
            DeliveryStatus, name="delivery_status", values_callable=lambda e: [m.value for m in e]
        ),
        default=DeliveryStatus.PENDING,
    )
    attempts: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempted_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


__all__ = [
    "Base",
    "Batch",
    "Delivery",
    "DeliveryStatus",
    "Image",
    "ImagePath",
    "ImageStatus",
    "ModelVersion",
    "Prediction",
    "Promotion",
    "Study",
    "TrainingRun",
    "utcnow",
]
