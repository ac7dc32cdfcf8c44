"""The scheduler's commands: ``ingest``, ``run-batch``, ``scheduler``, ``requeue``, and for
analysts ``status``, ``results`` and ``report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mdf.analysis.export import FORMATS, parse_since
from mdf.settings import get_settings


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

    results = subparsers.add_parser("results", help="per-image results (the study_results view)")
    results.add_argument("--batch", metavar="NAME")
    results.add_argument(
        "--since",
        type=parse_since,
        metavar="DATE",
        help="images registered (delivered) at or after this ISO date or time; UTC by default",
    )
    results.add_argument("--label", help="only images whose latest prediction has this label")
    results.add_argument("--limit", type=int, metavar="N", help="at most N rows")
    results.add_argument(
        "--format", choices=FORMATS, default="table", help="table (default) shows fewer columns"
    )
    results.add_argument(
        "--out", type=Path, metavar="FILE", help="instead of stdout (parquet needs one)"
    )
    results.set_defaults(handler=_results)

    report = subparsers.add_parser("report", help="a self-contained HTML report of one batch")
    report.add_argument("batch", metavar="BATCH")
    report.add_argument(
        "--out", type=Path, metavar="FILE", help="default: MDF_DATA_DIR/reports/BATCH.html"
    )
    report.set_defaults(handler=_report)

    status = subparsers.add_parser("status", help="image counts per batch and status")
    status.add_argument("--batch")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)


def _ingest(args: argparse.Namespace) -> int:
    from scheduler.service import Scheduler

    report, queued = Scheduler(get_settings()).ingest(args.path, args.batch)
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


def _run_batch(args: argparse.Namespace) -> int:
    from scheduler.run_batch import BatchRun

    if not args.path.is_dir():
        print(f"mdf run-batch: {args.path} is not a folder", file=sys.stderr)
        return 2
    if args.model is not None:
        os.environ["MDF_MODEL_DIR"] = str(args.model)
        get_settings.cache_clear()
    terminal = sys.stderr if sys.stderr.isatty() else None
    try:
        run = BatchRun(
            get_settings(), workers=args.workers, timeout_s=args.timeout, terminal=terminal
        )
    except ValueError as error:
        print(f"mdf run-batch: {error}", file=sys.stderr)
        return 2
    outcome = run.run(args.path, args.batch)
    print(outcome.summary.render())
    if outcome.failure is not None:
        print(f"mdf run-batch: {outcome.failure}", file=sys.stderr)
    return outcome.exit_code


def _scheduler(args: argparse.Namespace) -> int:
    import scheduler.tasks  # noqa: F401  (registers the tasks this process serves)
    from mdf.celery_app import INTAKE_QUEUE, create_app

    app = create_app(get_settings())
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


def _requeue(args: argparse.Namespace) -> int:
    from scheduler.service import Scheduler

    requeued, failed = Scheduler(get_settings()).requeue(args.older_than)
    print(f"{requeued} images re-sent, {failed} marked failed after too many attempts")
    return 0


def _status(args: argparse.Namespace) -> int:
    from scheduler.service import Scheduler

    counts = Scheduler(get_settings()).status_counts(args.batch)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    statuses = ["registered", "queued", "processing", "done", "rejected", "failed"]
    width = max([len("batch"), *map(len, counts)])
    print(f"{'batch':<{width}}  " + "  ".join(f"{s:>10}" for s in statuses))
    for name, row in counts.items():
        print(f"{name:<{width}}  " + "  ".join(f"{row[s]:>10}" for s in statuses))
    return 0


def _results(args: argparse.Namespace) -> int:
    from db.session import session_factory
    from mdf.analysis.export import Filters, export, fetch

    filters = Filters(batch=args.batch, since=args.since, label=args.label, limit=args.limit)
    with session_factory(get_settings().resolved_database_url)() as session:
        rows = fetch(session, filters)
    try:
        export(rows, args.format, args.out, sys.stdout)
    except ValueError as error:
        print(f"mdf results: {error}", file=sys.stderr)
        return 2
    return 0


def _report(args: argparse.Namespace) -> int:
    from mdf.analysis.report import UnknownBatch, write_report

    try:
        path = write_report(get_settings(), args.batch, args.out)
    except UnknownBatch as error:
        print(f"mdf report: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
