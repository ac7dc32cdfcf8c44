"""The DICOM network commands: ``mdf dicom listen``, ``mdf dicom echo`` and ``mdf pull``."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import date

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
    echo = commands.add_parser(
        "echo",
        help="C-ECHO a listener (by default ours on this host, calling as the first allowed "
        "AE title): exit 0 when it answers; the listener's container health check",
    )
    echo.add_argument("--host", default="127.0.0.1", help="its address (default: 127.0.0.1)")
    echo.add_argument("--port", type=int, help="its port (default: MDF_DICOM_PORT)")
    echo.add_argument("--ae-title", help="its AE title (default: MDF_DICOM_AE_TITLE)")
    echo.add_argument(
        "--calling-ae",
        help="ours (default: the first of MDF_DICOM_ALLOWED_AES, else MDF_DICOM_AE_TITLE)",
    )
    echo.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    echo.set_defaults(handler=_echo)

    pull = subparsers.add_parser(
        "pull", help="fetch new instances from a PACS over DICOMweb (QIDO-RS, WADO-RS) and ingest"
    )
    pull.add_argument(
        "--dicomweb", metavar="URL", help="the source's base URL (default: MDF_DICOMWEB_SOURCES)"
    )
    pull.add_argument(
        "--since", type=date.fromisoformat, metavar="DATE", help="first study date (ISO)"
    )
    pull.add_argument("--until", type=date.fromisoformat, metavar="DATE", help="last study date")
    pull.add_argument(
        "--modality", metavar="OP,XC", help="modalities (default: MDF_DICOMWEB_MODALITIES)"
    )
    pull.add_argument("--batch", help="batch name (default: dicomweb-SOURCE-today)")
    pull.set_defaults(handler=_pull)


def _listen(args: argparse.Namespace, settings: Settings) -> int:
    from mdf.metrics import serve
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
    serve(settings.metrics_port)
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


def _echo(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.dicom_listen import echo

    called = args.ae_title or settings.dicom_ae_title
    calling = args.calling_ae or next(iter(settings.dicom_allowed_aes), settings.dicom_ae_title)
    port = args.port or settings.dicom_port
    problem = echo(args.host, port, called=called, calling=calling, timeout_s=args.timeout)
    where = f"{called}@{args.host}:{port}"
    print(f"{where}: {problem}" if problem else f"{where} answered C-ECHO")
    return 1 if problem else 0


def _pull(args: argparse.Namespace, settings: Settings) -> int:
    import requests

    from scheduler.pull import default_window
    from scheduler.service import Scheduler

    sources = [args.dicomweb] if args.dicomweb else settings.dicomweb_sources
    if not sources:
        raise CommandError("name a source with --dicomweb URL or set MDF_DICOMWEB_SOURCES")
    since, until = default_window(settings)
    window = (args.since or since, args.until or until)
    if window[0] > window[1]:
        raise CommandError(f"--since {window[0]} is after --until {window[1]}")
    modalities = args.modality.split(",") if args.modality else settings.dicomweb_modalities
    settings.resolved_pseudonym_key()  # a bad key stops us before anything is fetched
    scheduler = Scheduler(settings)
    failures = 0
    for url in sources:
        try:
            pulled, report, queued = scheduler.pull(url, window, modalities, args.batch)
        except requests.RequestException as error:
            raise CommandError(f"{url}: {type(error).__name__}: {error}") from error
        print(
            f"{url}: {pulled.found} instances found, {pulled.already_held} already held, "
            f"{pulled.retrieved} retrieved, {pulled.failures} failed; batch {report.batch}: "
            f"{report.images} new images, {report.rejected} rejected, {queued} queued"
        )
        for reason, count in sorted(pulled.failed.items()):
            print(f"  not retrieved ({count}): {reason}")
        failures += pulled.failures
    return 1 if failures else 0
