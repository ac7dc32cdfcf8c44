"""The scheduler's commands: ``ingest``, ``run-batch``, ``scheduler`` and ``requeue``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdf.errors import CommandError
from mdf.settings import Settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="register and queue one delivered folder")
    ingest.add_argument("path", type=Path)
    ingest.add_argument("--batch", help="batch name (default: folder name and today's date)")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(handler=_ingest)

    run_batch = subparsers.add_parser(
        "run-batch", help="the nightly job: ingest a folder, see it classified, summarise"
    )
    run_batch.add_argument("path", type=Path)
    run_batch.add_argument("--batch", help="batch name (default: folder name and today's date)")
    run_batch.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="overrides MDF_MODEL_DIR for the workers this starts (a promoted version wins)",
    )
    run_batch.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="give up after this long, intake included (default: 3600)",
    )
    run_batch.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local workers to start when none serves the inference queue (default: 1)",
    )
    run_batch.set_defaults(handler=_run_batch)

    scheduler = subparsers.add_parser(
        "scheduler", help="run Celery beat and the intake queue: scans MDF_INBOXES on schedule"
    )
    scheduler.set_defaults(handler=_scheduler)

    requeue = subparsers.add_parser("requeue", help="re-send images left queued or processing")
    requeue.add_argument(
        "--older-than", type=float, metavar="SECONDS", help="default: MDF_REQUEUE_AFTER_S"
    )
    requeue.set_defaults(handler=_requeue)


def _delivered_folder(path: Path) -> Path:
    if not path.is_dir():
        raise CommandError(f"{path} is not a folder")
    return path


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.service import Scheduler

    folder = _delivered_folder(args.path)
    settings.resolved_pseudonym_key()  # a bad key stops us before the database is opened
    report, queued = Scheduler(settings).ingest(folder, args.batch)
    if args.json:
        print(json.dumps({**vars(report), "queued": queued}, indent=2))
    else:
        print(
            f"batch {report.batch}: {report.files} files read, {report.unchanged} unchanged, "
            f"{report.images} new images, {report.duplicates} already known, "
            f"{report.rejected} rejected, {queued} queued"
        )
        for code, count in sorted(report.rejected_by_code.items()):
            print(f"  rejected {code}: {count}")
    return 0


def _run_batch(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.run_batch import BatchRun

    folder = _delivered_folder(args.path)
    settings.resolved_pseudonym_key()  # a bad key stops us before the database is opened
    if args.model is not None:
        settings = settings.model_copy(update={"model_dir": args.model})
    terminal = sys.stderr if sys.stderr.isatty() else None
    try:
        run = BatchRun(settings, workers=args.workers, timeout_s=args.timeout, terminal=terminal)
    except ValueError as error:
        raise CommandError(str(error)) from error
    outcome = run.run(folder, args.batch)
    print(outcome.summary.render())
    if outcome.failure is not None:
        print(f"mdf run-batch: {outcome.failure}", file=sys.stderr)
    return outcome.exit_code


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    import scheduler.tasks  # noqa: F401  (registers the tasks this process serves)
    from db.metrics import ImageMetrics
    from db.session import session_factory
    from mdf.celery_app import INTAKE_QUEUE, create_app
    from mdf.metrics import QueueDepth, serve

    settings.resolved_pseudonym_key()  # refuse to start rather than fail every nightly scan
    app = create_app(settings)
    sessions = session_factory(settings.resolved_database_url)
    serve(settings.metrics_port, ImageMetrics(sessions), QueueDepth(settings))
    app.worker_main(
        [
            "worker",
            "--beat",
            "--queues",
            INTAKE_QUEUE,
            "--pool",
            "solo",
            "--hostname",
            "scheduler@%h",
        ]
    )
    return 0


def _requeue(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.service import Scheduler

    requeued, failed = Scheduler(settings).requeue(args.older_than)
    print(f"{requeued} images re-sent, {failed} marked failed after too many attempts")
    return 0
