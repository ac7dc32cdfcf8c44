"""``mdf model init`` and ``mdf model info``, driven through argparse (``mdf classify`` is the
worker's: tests/worker/test_classify_command.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import structlog

from mdf_model.cli import add_commands


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mdf")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    with structlog.testing.capture_logs():  # keep log lines out of the JSON on stdout
        return args.handler(args)


def test_registering_the_commands_does_not_import_torch() -> None:
    code = "import sys, argparse, mdf_model.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_of_the_11b_preset_builds_on_the_meta_device(capsys) -> None:
    assert run("model", "info", "--preset", "llama-3.2-11b-vision", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fusion_layers"] == [3, 18, 28, 38]
    assert info["cross_attention_layers"] == [3, 8, 13, 18, 23, 28, 33, 38]
    assert 10.6e9 < info["parameters"]["base"] < 10.8e9
    assert info["parameters"]["total"] == sum(
        info["parameters"][k] for k in ("base", "unet", "fusion", "film")
    )
    assert info["bf16_weight_bytes"] == 2 * info["parameters"]["total"]
    assert info["vision_tiles_per_512px_image"] == {"used": 1, "computed": 1}
    assert info["labels"] == ["acquired", "inherited"]


def test_init_info(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "tiny"
    assert (
        run(
            "model",
            "init",
            "--preset",
            "tiny",
            directory,
            "--seed",
            "3",
            "--labels",
            "normal,glaucoma,AMD",
        )
        == 0
    )
    assert "version" in capsys.readouterr().out

    assert run("model", "info", directory, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == ["normal", "glaucoma", "AMD"]
    assert info["fusion_layers"] == [1, 3, 5, 7]


def test_unusable_requests_exit_2(tmp_path: Path, capsys) -> None:
    assert run("model", "init", "--preset", "llama-3.2-11b-vision", tmp_path / "x") == 2
    assert "--base is required" in capsys.readouterr().err
    assert run("model", "info", tmp_path) == 2
    assert "mdf_config.json" in capsys.readouterr().err
