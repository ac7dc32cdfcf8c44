"""The root command: commands from the entry points, settings from flags over the environment,
and a user's error as one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from mdf.celery_app import app_settings, create_app
from mdf.cli import COMMANDS_GROUP, build_parser, load_settings
from mdf.settings import Settings

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def mdf(*args: str) -> subprocess.CompletedProcess[str]:
    """``mdf ARGS`` in a new process, with this test's MDF_ variables."""
    return subprocess.run(
        [sys.executable, "-m", "mdf.cli", *args], capture_output=True, text=True, timeout=120
    )


def commands(parser: argparse.ArgumentParser) -> set[str]:
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollback",), "mdf rollback: no model version is promoted: nothing to roll back\n"),
        (("promote", "nosuch"), "mdf promote: no model version named 'nosuch'; see `mdf models`\n"),
    ],
    ids=["rollback", "promote"],
)
def test_a_command_error_is_one_line_on_stderr_and_exit_2(
    settings: Settings, args: tuple[str, ...], message: str
) -> None:
    result = mdf(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message)


def test_flags_beat_the_environment_which_beats_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MDF_CHUNK_SIZE=7\nMDF_BROKER_URL=redis://from-env-file/0\n")
    monkeypatch.delenv("MDF_CHUNK_SIZE", raising=False)
    monkeypatch.setenv("MDF_BROKER_URL", "redis://from-environment/0")
    monkeypatch.setenv("MDF_DATA_DIR", str(tmp_path / "from-environment"))
    args = build_parser().parse_args(["--data-dir", str(tmp_path / "from-flag"), "status"])
    settings = load_settings(args)
    assert settings.data_dir == tmp_path / "from-flag"
    assert settings.broker_url == "redis://from-environment/0"
    assert settings.chunk_size == 7
    assert os.environ["MDF_DATA_DIR"] == str(tmp_path / "from-environment")  # left as it was


def test_the_root_parser_gets_every_command_from_the_entry_points() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][COMMANDS_GROUP]
    found = entry_points(group=COMMANDS_GROUP)
    installed = {entry_point.name: entry_point.value for entry_point in found}
    assert installed == declared, "the installed entry points are stale: pip install -e ."
    expected: set[str] = set()
    for entry_point in found:
        parser = argparse.ArgumentParser()
        entry_point.load()(parser.add_subparsers())
        expected |= commands(parser)
    assert commands(build_parser()) == expected
    assert {"db", "status", "run-batch", "worker", "classify", "promote", "synth"} <= expected
    assert {"dicom", "pull", "deliver"} <= expected


def test_tasks_read_the_settings_their_app_was_built_from(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", chunk_size=5)
    assert app_settings(create_app(settings)) is settings
