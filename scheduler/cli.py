"""``mdf ingest``, ``mdf scheduler``, ``mdf requeue`` and ``mdf status``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mdf.settings import get_settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="register and queue one delivered folder")
    ingest.add_argument("path", type=Path)
    ingest.add_argument("--batch", help="batch name (default: folder name and today's date)")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(handler=_ingest)

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
    results.add_argument("--batch")
    results.add_argument("--limit", type=int, default=50)
    results.set_defaults(handler=_results)

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
    from sqlalchemy import text

    from db.session import session_factory

    query = (
        "SELECT image_id, batch, laterality, status, reason, label, probability, "
        "generated_text, model_version FROM study_results"
    )
    query += " WHERE batch = :batch" if args.batch else ""
    query += " ORDER BY image_id LIMIT :limit"
    with session_factory(get_settings().resolved_database_url)() as session:
        rows = session.execute(text(query), {"batch": args.batch, "limit": args.limit}).all()
    print(f"{'image':>6}  {'eye':<3}  {'status':<9}  {'label':<10}  {'prob':>5}  text / reason")
    for image_id, _, eye, status, reason, label, probability, generated, _ in rows:
        shown = f"{probability:.2f}" if probability is not None else "-"
        detail = reason if reason else (generated or "")
        print(
            f"{image_id:>6}  {eye or '-':<3}  {status:<9}  {label or '-':<10}  {shown:>5}  {detail}"
        )
    return 0
