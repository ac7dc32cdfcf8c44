"""The one structlog setup of the service, which keeps patient identity out of every line.

JSON lines in production (one object a line, for log shippers), readable console
output on a terminal. Context such as ``batch_id`` and ``image_id`` is bound with
``structlog.contextvars`` so every line of a batch carries it.

Identity stays out three ways. Fields named like an identifying column (the names
``db.identifying`` lists; this layer cannot import it, a test keeps both alike) or a
patient's name or ID are withheld. Exceptions are rendered here: a database error's
message repeats row values (PostgreSQL's ``DETAIL: Key (study_key)=(...)``), so it
becomes its class, SQLSTATE and the names of what failed. Libraries log through the
standard library, and warnings are routed there too: quoted text in their lines, where
pydicom and Celery put the values they complain about, is withheld. On a console,
escape sequences and control characters are removed as well (``mdf.terminal``).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy.exc import StatementError

from mdf.settings import Settings
from mdf.terminal import printable

#: Event keys that must never reach a log line; callers log pseudonyms and ids instead.
PATIENT_FIELDS = frozenset({"patient_id", "patient_name", "PatientID", "PatientName"})
WITHHELD_FIELDS = PATIENT_FIELDS | {
    "source",
    "path",
    "source_path",
    "mask_path",
    "clinical_text",
    "study_uid",
    "series_uid",
    "sop_uid",
    "study_key",
}

# From the first quote to the last of the same kind: a value may itself hold quotes.
_QUOTED = re.compile(r"""(['"]).*\1""", re.DOTALL)


def withhold_quoted(text: str) -> str:
    """``text`` with quoted passages replaced by an ellipsis."""
    return _QUOTED.sub(r"\1…\1", text)


def summarise_error(error: BaseException) -> str:
    """One line about ``error`` that names no stored value.

    A database error becomes its driver's class, its message with quoted text withheld,
    and, from PostgreSQL, the SQLSTATE and the table, column and constraint concerned.
    """
    kinds = [type(error).__name__]
    if isinstance(error, StatementError) and error.orig is not None:
        error = error.orig
        kinds.append(type(error).__name__)  # IntegrityError/UniqueViolation
    lines = str(error).strip().splitlines()
    text = ": ".join(["/".join(dict.fromkeys(kinds)), *map(withhold_quoted, lines[:1])])
    diag = getattr(error, "diag", None)  # psycopg's names of what failed, never values
    names = ("sqlstate", "table_name", "column_name", "constraint_name")
    found = [f"{name}={value}" for name in names if (value := getattr(diag, name, None))]
    return f"{text} ({', '.join(found)})" if found else text


def render_exception(error: BaseException) -> str:
    """The traceback of ``error`` and its causes, database errors summarised.

    Frames show source lines, not values; only the messages of database errors (and of
    the driver errors behind them) are replaced.
    """
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    database = {id(e) for e in chain if isinstance(e, StatementError)}
    database |= {id(e.orig) for e in chain if isinstance(e, StatementError) and e.orig}
    parts = []
    for link in reversed(chain):
        if id(link) in database:
            message = summarise_error(link) + "\n"
        else:
            message = "".join(traceback.format_exception_only(link))
        frames = "".join(traceback.format_tb(link.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{message}")
    return "\nwhich led to:\n\n".join(parts).rstrip("\n")


def _render_exception(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info if isinstance(exc_info, BaseException) else (exc_info or (None,) * 3)[1]
    if error is not None:
        event["exception"] = render_exception(error)
    return event


def _withhold_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in WITHHELD_FIELDS & event.keys():
        event[key] = "[withheld]"
    return event


def _withhold_library_values(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Lines logged by libraries (not by structlog) carry values in quotes: withhold them."""
    if not event.get("_from_structlog", True) and isinstance(event.get("event"), str):
        event["event"] = withhold_quoted(event["event"])
    return event


def _printable(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console: no escape sequence or control character of the values reaches it."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = printable(value, keep="\n" if key == "exception" else "")
    return event


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    console = fmt == "console"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelName(settings.log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _withhold_fields,
        _withhold_library_values,
        _render_exception,
        *([_printable] if console else []),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (Celery, Alembic, pydicom) log through the standard library, and
    # warnings join them there: render them alike, through the same processors.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    # Alembic narrates every schema check; `mdf db upgrade` turns it back on.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """A crash is logged like any error, so its traceback is rendered here too."""
    structlog.get_logger(__name__).critical("uncaught_exception", exc_info=(kind, error, trace))
