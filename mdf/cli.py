"""The ``mdf`` command: one entry point, a subcommand per job.

The root command knows no service: each package that offers commands names its
``add_commands(subparsers)`` in the ``mdf.commands`` entry-point group (pyproject.toml),
as Celery finds its own commands. Handlers import heavy libraries (torch, the model)
only when they run, so ``mdf status`` stays fast. ``main`` builds the settings once,
flags over environment, and hands them to the handler: ``handler(args, settings)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from pydantic import ValidationError

from mdf.errors import EXIT_USAGE, CommandError
from mdf.logs import configure_logging
from mdf.settings import Settings

COMMANDS_GROUP = "mdf.commands"

#: Flags of the root command that override the setting of the same name.
SETTING_FLAGS = ("data_dir", "database_url", "broker_url", "log_format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdf", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="overrides MDF_DATA_DIR")
    parser.add_argument("--database-url", help="overrides MDF_DATABASE_URL")
    parser.add_argument("--broker-url", help="overrides MDF_BROKER_URL")
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry_point in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name):
        entry_point.load()(subparsers)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    """Defaults < ``.env`` < environment < flags: pydantic-settings ranks keyword
    arguments above every other source."""
    flags = {name: value for name in SETTING_FLAGS if (value := getattr(args, name)) is not None}
    try:
        return Settings(**flags)
    except ValidationError as error:
        problems = "; ".join(
            f"MDF_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        configure_logging(settings)
        return int(args.handler(args, settings) or 0)
    except CommandError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"mdf {args.command}: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
