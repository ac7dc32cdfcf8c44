"""The ``mdf`` command: one entry point, a subcommand per job.

Each package adds its own subcommands through an ``add_commands(subparsers)``
function in its ``cli`` module; handlers import heavy libraries (torch, the
model) only when they run, so ``mdf status`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mdf.logs import configure_logging
from mdf.settings import get_settings

COMMAND_MODULES = ("db.cli", "scheduler.cli", "worker.cli", "training.cli", "mdf_model.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdf", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="overrides MDF_DATA_DIR")
    parser.add_argument("--database-url", help="overrides MDF_DATABASE_URL")
    parser.add_argument("--broker-url", help="overrides MDF_BROKER_URL")
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue  # a package that offers no commands yet
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Command-line flags win over the environment: apply them before the first read.
    for flag in ("data_dir", "database_url", "broker_url", "log_format"):
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"MDF_{flag.upper()}"] = str(value)
    get_settings.cache_clear()
    configure_logging(get_settings())
    from db.session import DatabaseNotMigrated

    try:
        return int(args.handler(args) or 0)
    except DatabaseNotMigrated as error:
        print(f"mdf: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
