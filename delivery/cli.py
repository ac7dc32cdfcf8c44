"""``mdf deliver``: send finished DICOM studies' SR and SEG to the PACS by hand.

The deliver queue sends each study as it finishes, and the scheduler's sweep each one the
worker's message never reached, to every configured destination; this sends what is still
unsent (a PACS that was down past the retries, a destination named with ``--to``), or, with
``--resend``, everything again under the same UIDs.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from mdf.errors import CommandError
from mdf.settings import Settings

EXIT_SOME_FAILED = 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    deliver = subparsers.add_parser(
        "deliver", help="send finished DICOM studies' results (SR, SEG) to the PACS"
    )
    deliver.add_argument("--batch", help="only the studies of this batch (default: every one)")
    deliver.add_argument(
        "--to",
        metavar="DESTINATION",
        help="dicomweb:URL or dicom:AET@HOST:PORT (default: MDF_RESULTS_DESTINATIONS)",
    )
    deliver.add_argument(
        "--resend", action="store_true", help="send again what was sent (same UIDs: replaced)"
    )
    deliver.set_defaults(handler=_deliver)


def _destinations(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.to is None:
        if not settings.results_destinations:
            raise CommandError("name a destination with --to or set MDF_RESULTS_DESTINATIONS")
        return settings
    try:
        return Settings.model_validate(settings.model_dump() | {"results_destinations": [args.to]})
    except ValidationError as error:
        raise CommandError(
            f"--to {args.to}: expected dicomweb:URL or dicom:AET@HOST:PORT"
        ) from error


def _deliver(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.deliveries import finished_dicom_studies
    from db.models import Batch
    from db.session import session_factory
    from delivery.service import Deliverer

    settings = _destinations(args, settings)
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as session:
        if args.batch and session.scalar(select(Batch.id).where(Batch.name == args.batch)) is None:
            raise CommandError(f"no batch named {args.batch}")
        studies = finished_dicom_studies(session, batch=args.batch)
    deliverer = Deliverer(settings, sessions)
    sent = skipped = 0
    failed: dict[str, int] = {}
    for study_id in studies:
        report = deliverer.deliver(study_id, again=args.resend)
        sent += report.sent
        skipped += report.skipped
        for reason, count in report.failed.items():
            failed[reason] = failed.get(reason, 0) + count
    names = ", ".join(target.name for target in deliverer.destinations)
    print(
        f"{len(studies)} finished DICOM studies to {names}: {sent} objects sent, "
        f"{skipped} already sent or being sent, {sum(failed.values())} failed"
    )
    for reason, count in sorted(failed.items()):
        print(f"  failed ({count}): {reason}")
    return EXIT_SOME_FAILED if failed else 0
