"""The DICOM network commands: ``mdf dicom listen`` and ``mdf pull``."""

from __future__ import annotations

import argparse
import signal
import threading

from pydantic import ValidationError

from mdf.errors import CommandError
from mdf.settings import Settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    dicom = subparsers.add_parser("dicom", help="DICOM network services")
    commands = dicom.add_subparsers(dest="dicom_command", required=True, metavar="COMMAND")
    listen = commands.add_parser(
        "listen", help="receive instances by C-STORE and hand each quiet study to intake"
    )
    listen.add_argument("--host", help="address to bind (default: MDF_DICOM_HOST)")
    listen.add_argument("--port", type=int, help="port (default: MDF_DICOM_PORT)")
    listen.add_argument("--ae-title", help="our AE title (default: MDF_DICOM_AE_TITLE)")
    listen.set_defaults(handler=_listen)


def _listen(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.dicom_listen import batch_name, listen
    from scheduler.service import Scheduler

    overrides = {"dicom_host": args.host, "dicom_port": args.port, "dicom_ae_title": args.ae_title}
    try:
        settings = Settings.model_validate(
            settings.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        )
    except ValidationError as error:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors())
        raise CommandError(f"invalid option: {problems}") from error
    if not settings.dicom_allowed_aes:
        raise CommandError(
            "MDF_DICOM_ALLOWED_AES is empty: name the calling AE titles of the cameras and "
            "PACS that may send (comma-separated)"
        )
    settings.resolved_pseudonym_key()  # a bad key stops us before anything is acknowledged
    scheduler = Scheduler(settings)  # refuses an unmigrated database before we listen
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        listen(
            settings,
            lambda folder: scheduler.ingest(folder, batch_name()),
            host=settings.dicom_host,
            port=settings.dicom_port,
            ae_title=settings.dicom_ae_title,
            stop=stop,
        )
    except OSError as error:
        raise CommandError(
            f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {error.strerror}"
        ) from error
    return 0
