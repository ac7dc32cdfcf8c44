"""README.md stays true: its commands exist, its settings are the real ones, its SQL runs.

The commands themselves run elsewhere (the demo test runs the demo path; each command has
its own tests); here every command line in the README is parsed by the real parser, so a
renamed subcommand or flag fails a test instead of a newcomer.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.session import make_engine
from mdf.cli import build_parser
from mdf.settings import Settings
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def command_lines() -> list[list[str]]:
    """Each shell line of the README, split like a shell would, without comments, leading
    variable assignments and the ``.venv/bin/`` of a program."""
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words:
                lines.append([words[0].removeprefix(".venv/bin/"), *words[1:]])
    return lines


def test_the_readme_shows_mdf_make_and_docker_commands() -> None:
    programs = {words[0] for words in command_lines()}
    assert {"mdf", "make", "docker"} <= programs


@pytest.mark.parametrize(
    "words",
    [words for words in command_lines() if words[0] == "mdf"],
    ids=lambda words: " ".join(words[:3]),
)
def test_every_mdf_command_in_the_readme_parses(words: list[str]) -> None:
    build_parser().parse_args(words[1:])


def test_make_targets_and_files_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for words in command_lines():
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.MULTILINE), words
        if words[0] == "docker":
            for flag, value in itertools.pairwise(words):
                if flag == "-f" and value.endswith((".yml", ".yaml")):
                    assert (ROOT / value).is_file(), value
        if words[0] == "cp":
            assert (ROOT / words[1]).is_file(), words


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    table = {
        name: default
        for names, default in re.findall(r"^\| ((?:`MDF_\w+`(?:, )?)+) \| ([^|]*) \|", README, re.M)
        for name in re.findall(r"`(MDF_\w+)`", names)
    }
    fields = {f"MDF_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(table) == set(fields)
    for name, field in fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, int | str | Path) and not isinstance(default, bool):
            shown = f"{default:,}" if isinstance(default, int) else str(default)
            assert shown in table[name], (name, shown, table[name])


def test_the_readme_sql_runs(database_url: str) -> None:
    statements = [s for block in blocks("sql") for s in block.split(";") if s.strip()]
    assert len(statements) >= 4
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(sa.text(statement)).all()
    finally:
        engine.dispose()


def test_the_readme_training_configuration_is_valid(tmp_path: Path) -> None:
    (block,) = blocks("yaml")
    path = tmp_path / "train.yaml"
    path.write_text(block)
    config = TrainConfig.from_file(path)
    assert config.held_out_source == "stonerounds"
