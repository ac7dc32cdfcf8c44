"""``mdf model init`` and ``mdf model info``.

`add_commands` only declares the commands: torch and the model load when a handler runs, so
registering them keeps ``mdf`` fast. Handlers are called as ``handler(args, settings)`` like
every ``mdf`` command, and ignore the service's settings: this package imports nothing of the
service. They return the exit code: 0 on success, 2 when the checkpoint, the preset or the
arguments are unusable (the reason goes to stderr on one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mdf_model.presets import PRESETS

__all__ = ["add_commands"]

EXIT_OK, EXIT_UNUSABLE = 0, 2
_BYTES_PER_GIB = 1024**3


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` (with ``init`` and ``info``) to an argparse parser."""
    model = subparsers.add_parser("model", help="build and inspect MDF-MLLM checkpoints")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="write a new checkpoint directory")
    init.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    init.add_argument("--labels", help="comma-separated labels (default: the preset's)")
    init.add_argument(
        "--base",
        type=Path,
        help="local Hugging Face directory of the base model (needed for presets but tiny)",
    )
    init.add_argument("directory", type=Path, help="new (or empty) checkpoint directory")
    init.set_defaults(handler=_init)

    info = commands.add_parser("info", help="parameters, fusion layers, labels, memory, FLOPs")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS))
    source.add_argument("directory", nargs="?", type=Path, help="checkpoint directory")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(handler=_info)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def _init(args: argparse.Namespace, _settings: object = None) -> int:
    from mdf_model.checkpoint import verify_manifest
    from mdf_model.configuration import MDFConfig
    from mdf_model.modeling import MDFModel
    from mdf_model.tiny import build_tiny_checkpoint

    labels = None if args.labels is None else [x.strip() for x in args.labels.split(",")]
    try:
        if args.preset == "tiny":
            build_tiny_checkpoint(args.directory, seed=args.seed, labels=labels)
            version = verify_manifest(args.directory).version_hash
        else:
            if args.base is None:
                return _fail(f"--base is required for the {args.preset} preset")
            changes = {} if labels is None else {"labels": tuple(labels)}
            config = MDFConfig.from_preset(args.preset, **changes)
            model = MDFModel.from_base(args.base, config, seed=args.seed)
            version = model.save_pretrained(args.directory)
    except (ValueError, FileExistsError) as error:
        return _fail(str(error))
    print(f"{args.directory}: {args.preset} checkpoint, version {version}")
    return EXIT_OK


def _info(args: argparse.Namespace, _settings: object = None) -> int:
    from mdf_model.configuration import MDFConfig
    from mdf_model.flops import estimate_flops
    from mdf_model.modeling import MDFModel
    from mdf_model.pretrained import read_config

    try:
        config = (
            MDFConfig.from_preset(args.preset)
            if args.preset is not None
            else read_config(args.directory)
        )
    except ValueError as error:
        return _fail(str(error))
    model = MDFModel.from_config(config, device="meta")  # shapes only: no memory, no weights
    counts = model.parameter_counts()
    flops = estimate_flops(config)
    data = {
        "preset": config.preset,
        "source": str(args.directory) if args.directory is not None else "preset",
        "baseline": config.baseline,
        "parameters": counts,
        "cross_attention_layers": list(config.cross_attention_layers),
        "fusion_layers": [] if config.baseline else list(config.fusion_layers),
        "labels": list(config.labels),
        "unet_input_size": None if config.baseline else config.unet_input_size,
        "unet_tokens_per_image": 0 if config.baseline else model.projection.tokens_per_image,
        "bf16_weight_bytes": 2 * counts["total"],
        "bf16_weight_gib": round(2 * counts["total"] / _BYTES_PER_GIB, 2),
        "scoring_flops_per_512px_image": flops.total,
        "vision_tiles_per_512px_image": {
            "used": flops.tiles_used,
            "computed": flops.tiles_computed,
        },
    }
    _print(data, args.json)
    return EXIT_OK
