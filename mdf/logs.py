"""The one structlog setup of the service.

JSON lines in production (one object a line, for log shippers), readable console
output on a terminal. Context such as ``batch_id`` and ``image_id`` is bound with
``structlog.contextvars`` so every line of a batch carries it. As a second line of
defence, fields that would carry patient identity are dropped before rendering.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from mdf.settings import Settings

#: Event keys that must never reach a log line; callers log pseudonyms instead.
PATIENT_FIELDS = frozenset({"patient_id", "patient_name", "PatientID", "PatientName"})


def _drop_patient_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in PATIENT_FIELDS & event.keys():
        event[key] = "[removed]"
    return event


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelName(settings.log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_patient_fields,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (Celery, Alembic) log through the standard library: render them alike.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every schema check; `mdf db upgrade` turns it back on.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
