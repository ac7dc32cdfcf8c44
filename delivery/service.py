"""Delivering a finished study's results to every destination, each attempt recorded.

For each destination the study's planned objects get their rows, and this sender holds
those still to send (all of them with ``again``); only those are built and sent, and the
outcome of each is written as one more attempt. A study whose images are not all
finished waits: the worker that finishes its last image sends it to the deliver queue.
Objects that failed to send are worth another attempt later (``StudyDelivery.retry``);
one that cannot be built (its source changed, its mask gone) is recorded as failed with
the reason and not retried on its own. Logs name study ids, destinations and counts,
never a patient or a UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from db.deliveries import claim, is_finished, record, record_attempts
from delivery.destinations import Destination, destination
from delivery.objects import ResultObject, build, plan
from delivery.results import study_results
from mdf.settings import Settings

__all__ = ["Deliverer", "StudyDelivery"]

log = structlog.get_logger(__name__)

#: A sender holds the objects it sends this long; one that died lets them go after it.
LEASE_S = 900


@dataclass
class StudyDelivery:
    """What one delivery of a study did, over every destination."""

    study_id: int
    finished: bool = True
    sent: int = 0
    skipped: int = 0  # sent before, or held by another sender
    failed: dict[str, int] = field(default_factory=dict)  # reason: objects
    retry: bool = False  # a send failed: another attempt may succeed

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1


class Deliverer:
    """Delivers studies to the configured destinations (or to ``destinations``)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        destinations: Sequence[Destination] | None = None,
    ):
        self.sessions = sessions
        self.destinations = (
            list(destinations)
            if destinations is not None
            else [destination(text, settings) for text in settings.results_destinations]
        )

    def deliver(self, study_id: int, *, again: bool = False) -> StudyDelivery:
        """Send the study's objects not yet sent (``again``: every one) to each destination."""
        with self.sessions() as session:
            if not is_finished(session, study_id):
                return StudyDelivery(study_id, finished=False)
            objects = [item for group in study_results(session, study_id) for item in plan(group)]
        report = StudyDelivery(study_id)
        built: dict[str, Dataset | str] = {}
        for target in self.destinations:
            with self.sessions.begin() as session:
                record(session, [item.planned for item in objects], target.name)
                uids = [item.uid for item in objects]
                held = set(claim(session, uids, target.name, lease_s=LEASE_S, again=again))
            wanted = [item for item in objects if item.uid in held]
            report.skipped += len(objects) - len(wanted)
            built |= build([item for item in wanted if item.uid not in built])
            self._send(target, wanted, built, report)
        log.info(
            "study_delivered",
            study_id=study_id,
            sent=report.sent,
            skipped=report.skipped,
            failed=sum(report.failed.values()),
        )
        return report

    def _send(
        self,
        target: Destination,
        wanted: list[ResultObject],
        built: dict[str, Dataset | str],
        report: StudyDelivery,
    ) -> None:
        outcomes: dict[str, str | None] = {}
        ready: list[Dataset] = []
        for item in wanted:
            made = built[item.uid]
            if isinstance(made, Dataset):
                ready.append(made)
            else:
                outcomes[item.uid] = made  # not built: recorded, not sent
        if ready:
            sent = target.send(ready)
            report.retry |= any(reason is not None for reason in sent.values())
            outcomes |= sent
        with self.sessions.begin() as session:
            record_attempts(session, target.name, outcomes)
        for reason in outcomes.values():
            if reason is None:
                report.sent += 1
            else:
                report.fail(reason)
                log.warning("object_not_delivered", destination=target.name, reason=reason)
