"""The analysts' commands: ``status``, ``results``, ``outcomes`` and ``report``; they only
read the database."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from db.views import DECISIONS
from mdf.analysis.export import FORMATS, Filters, View, parse_since
from mdf.errors import CommandError
from mdf.settings import Settings
from mdf.terminal import printable


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser("status", help="image counts per batch and status")
    status.add_argument("--batch")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    results = subparsers.add_parser("results", help="per-image results (the study_results view)")
    results.add_argument("--batch", metavar="NAME")
    results.add_argument(
        "--since",
        type=parse_since,
        metavar="DATE",
        help="images registered (delivered) at or after this ISO date or time; UTC by default",
    )
    results.add_argument("--label", help="only images whose shown prediction has this label")
    _output_arguments(results)
    results.set_defaults(handler=_results)

    outcomes = subparsers.add_parser(
        "outcomes", help="per-patient screening decisions (the screening_outcomes view)"
    )
    outcomes.add_argument("--batch", metavar="NAME")
    outcomes.add_argument("--decision", choices=DECISIONS, help="only studies with this decision")
    _output_arguments(outcomes)
    outcomes.set_defaults(handler=_outcomes)

    report = subparsers.add_parser("report", help="a self-contained HTML report of one batch")
    report.add_argument("batch", metavar="BATCH")
    report.add_argument(
        "--out", type=Path, metavar="FILE", help="default: MDF_DATA_DIR/reports/BATCH.html"
    )
    report.set_defaults(handler=_report)


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, metavar="N", help="at most N rows")
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="table (default) shows fewer columns"
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="instead of stdout (parquet needs one)"
    )


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from db.models import ImageStatus
    from db.session import session_factory
    from mdf.analysis.status import status_counts

    counts = status_counts(session_factory(settings.resolved_database_url), args.batch)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    statuses = [status.value for status in ImageStatus]
    width = max([len("batch"), *map(len, counts)])
    print(f"{'batch':<{width}}  " + "  ".join(f"{s:>10}" for s in statuses))
    for name, row in counts.items():
        print(printable(f"{name:<{width}}  " + "  ".join(f"{row[s]:>10}" for s in statuses)))
    return 0


def _results(args: argparse.Namespace, settings: Settings) -> int:
    from db.views import STUDY_RESULTS

    filters = Filters(batch=args.batch, since=args.since, label=args.label, limit=args.limit)
    return _export(args, settings, filters, STUDY_RESULTS)


def _outcomes(args: argparse.Namespace, settings: Settings) -> int:
    from db.views import SCREENING_OUTCOMES

    filters = Filters(batch=args.batch, decision=args.decision, limit=args.limit)
    return _export(args, settings, filters, SCREENING_OUTCOMES)


def _export(args: argparse.Namespace, settings: Settings, filters: Filters, view: View) -> int:
    from db.session import session_factory
    from mdf.analysis.export import export, fetch

    with session_factory(settings.resolved_database_url)() as session:
        rows = fetch(session, filters, view)
    try:
        export(rows, args.format, args.out, sys.stdout, view)
    except (ValueError, OSError) as error:  # parquet without --out, an unwritable --out
        raise CommandError(str(error)) from error
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from mdf.analysis.report import UnknownBatch, write_report

    try:
        path = write_report(settings, args.batch, args.out)
    except (UnknownBatch, OSError) as error:
        raise CommandError(str(error)) from error
    print(path)
    return 0
