"""``mdf run-batch``: one night from a delivered folder to results, as a screening program runs it.

Ingest the folder, make sure inference workers serve it (the running fleet, or local
``mdf worker --burst`` processes started and always stopped here), watch the batch in
the database until every image is done, rejected or failed, re-send work that stopped
moving, and say what happened and where the results are. Progress comes from the
database alone, the source of truth; workers are only asked whether they are there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog
from celery import Celery

from db.lifecycle import FINISHED, PENDING, status_counts
from mdf.celery_app import INFERENCE_QUEUE
from mdf.settings import Settings
from scheduler.batch_progress import Progress, ProgressDisplay, count
from scheduler.batch_summary import Summary, summarise
from scheduler.local_workers import LocalWorkers
from scheduler.service import Scheduler

log = structlog.get_logger(__name__)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C


def serving_workers(app: Celery, timeout_s: float = 1.0) -> list[str]:
    """Names of the workers, on any host, that consume the inference queue."""
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(queue.get("name") == INFERENCE_QUEUE for queue in queues)
    )


@dataclass(frozen=True)
class Outcome:
    summary: Summary
    failure: str | None  # one line; None when every file ended as a prediction or rejection
    exit_code: int


class BatchRun:
    """Ingest one folder and see it through; ``run()`` never leaves a started worker behind.

    ``timeout_s`` counts from the start, intake included. Work that has not moved for
    ``MDF_REQUEUE_AFTER_S`` is re-sent as ``mdf requeue`` would.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        terminal: TextIO | None = None,
    ):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.settings = settings
        self.scheduler = Scheduler(settings)
        self.workers = workers
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.terminal = terminal

    def run(self, folder: Path, batch_name: str | None = None) -> Outcome:
        began = time.monotonic()
        report, _ = self.scheduler.ingest(folder, batch_name)
        display = ProgressDisplay(report.batch, self.terminal)
        who, failure, exit_code = "no worker (nothing to classify)", None, 0
        local: LocalWorkers | None = None
        structlog.contextvars.bind_contextvars(batch=report.batch)
        try:
            if count(self._counts(report.batch_id), PENDING):
                fleet = serving_workers(self.scheduler.app)
                if fleet:
                    log.info("fleet_serving", workers=fleet)
                    who = f"the running fleet ({', '.join(fleet)})"
                else:
                    local = LocalWorkers(self.workers, self.settings, name=report.batch)
                    local.start()  # assigned first: a Ctrl-C half-way still stops those started
                    who = f"{self.workers} local worker(s), logs in {local.log_dir}"
            failure = self._wait(report.batch_id, began, local, display)
        except KeyboardInterrupt:
            display.close()
            failure, exit_code = "interrupted", EXIT_INTERRUPTED
        finally:
            if local is not None:
                local.stop()
            structlog.contextvars.unbind_contextvars("batch")
        counts = self._counts(report.batch_id)
        with self.scheduler.sessions() as session:
            summary = summarise(
                session,
                self.settings,
                folder=folder,
                report=report,
                counts=counts,
                seconds=time.monotonic() - began,
                workers=who,
            )
        if failure is None and counts["failed"]:
            failure = f"{counts['failed']} images failed; the table above gives their reasons"
        if failure is not None and not exit_code:
            exit_code = EXIT_FAILED
        return Outcome(summary, failure, exit_code)

    def _counts(self, batch_id: int) -> dict[str, int]:
        """Images of the batch per status, every status present."""
        with self.scheduler.sessions() as session:
            return status_counts(session, batch_id)

    def _wait(
        self, batch_id: int, began: float, local: LocalWorkers | None, display: ProgressDisplay
    ) -> str | None:
        """Poll until nothing of the batch is pending; the reason it stopped early, if it did."""
        start = time.monotonic()
        last = self._counts(batch_id)
        finished_before, moved_at = count(last, FINISHED), start
        while True:
            # Exits are read before the counts, so work written before an exit is counted.
            exit_codes = local.exit_codes() if local is not None else None
            counts = self._counts(batch_id)
            now = time.monotonic()
            progress = Progress(counts, count(counts, FINISHED) - finished_before, now - start)
            if not progress.pending:
                reason = None
            elif exit_codes is not None:
                reason = (
                    f"the local workers exited (status {exit_codes}) with {progress.pending} "
                    "images unfinished; their logs say why"
                )
            elif now - began > self.timeout_s:
                reason = (
                    f"timed out after {self.timeout_s:.0f} s with {progress.pending} images "
                    "unfinished; they stay queued for the next run"
                )
            else:
                display.show(progress)
                if counts != last:
                    last, moved_at = counts, now
                elif now - moved_at >= self.settings.requeue_after_s:
                    log.warning("batch_stalled", seconds=round(now - moved_at))
                    self.scheduler.requeue(self.settings.requeue_after_s)
                    moved_at = now
                time.sleep(self.poll_s)
                continue
            display.show(progress, final=True)
            return reason
