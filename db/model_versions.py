"""Model versions: which one is promoted, registering a checkpoint, promoting and rolling back.

Promotion is one transaction: the old version is demoted, the new one promoted
and a ``promotions`` row records who replaced whom, why and with which metrics.
A partial unique index guarantees at most one promoted version at any time, so a
worker reading between two statements never sees two. Workers reload between
chunks, so a promotion takes effect at the next chunk and no chunk mixes versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ModelVersion, Promotion, utcnow


def promoted_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.is_promoted))


def register_version(
    session: Session,
    *,
    path: Path,
    manifest_sha256: str,
    labels: list[str],
    name: str | None = None,
    preset: str | None = None,
    metrics: dict[str, Any] | None = None,
    referral: dict[str, Any] | None = None,
) -> ModelVersion:
    """The version row of a checkpoint, created on first sight (safe against a racing twin).

    ``referral`` holds the per-label referral thresholds training chose (``ModelVersion``).
    """
    by_hash = select(ModelVersion).where(ModelVersion.manifest_sha256 == manifest_sha256)
    version = session.scalar(by_hash)
    if version is not None:
        return version
    try:
        with session.begin_nested():
            version = ModelVersion(
                name=name or manifest_sha256[:12],
                path=str(path.resolve()),
                manifest_sha256=manifest_sha256,
                labels=list(labels),
                preset=preset,
                metrics=metrics,
                referral=referral,
            )
            session.add(version)
    except IntegrityError:
        version = session.scalars(by_hash).one()
    return version


def promote(
    session: Session,
    version: ModelVersion,
    *,
    reason: str,
    metrics: dict[str, Any] | None = None,
    training_run_id: int | None = None,
    action: str = "promote",
) -> Promotion:
    previous = promoted_version(session)
    if previous is not None and previous.id == version.id:
        raise ValueError(f"model version {version.name} is already promoted")
    now = utcnow()
    session.execute(update(ModelVersion).where(ModelVersion.is_promoted).values(is_promoted=False))
    session.flush()
    version.is_promoted = True
    version.promoted_at = now
    record = Promotion(
        model_version_id=version.id,
        previous_version_id=previous.id if previous else None,
        action=action,
        reason=reason,
        metrics=metrics,
        training_run_id=training_run_id,
        created_at=now,
    )
    session.add(record)
    session.flush()
    return record


def rollback(session: Session, *, reason: str = "rolled back by an operator") -> Promotion:
    """Promote again the version that the current one's promotion replaced.

    Rollbacks themselves are not undone by a second rollback: it walks back along
    promotions only, so repeated rollbacks step further back in history.
    """
    current = promoted_version(session)
    if current is None:
        raise ValueError("no model version is promoted: nothing to roll back")
    last = session.scalar(
        select(Promotion)
        .where(Promotion.model_version_id == current.id, Promotion.action == "promote")
        .order_by(Promotion.id.desc())
        .limit(1)
    )
    if last is None or last.previous_version_id is None:
        raise ValueError(f"model version {current.name} replaced no earlier version")
    previous = session.get_one(ModelVersion, last.previous_version_id)
    return promote(session, previous, reason=reason, action="rollback")
