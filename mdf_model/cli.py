"""``mdf model init``, ``mdf model info`` and ``mdf classify``.

`add_commands` only declares the commands: torch and the model load when a handler runs, so
registering them keeps ``mdf`` fast. Handlers return the exit code: 0 on success, 1 when some
image files could not be classified, 2 when the checkpoint, the preset or the arguments are
unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mdf_model.configuration import PRESETS

__all__ = ["add_commands"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2
_BYTES_PER_GIB = 1024**3


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` (with ``init`` and ``info``) and ``classify`` to an argparse parser."""
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

    classify = subparsers.add_parser("classify", help="classify JPEG/PNG fundus photographs")
    classify.add_argument("checkpoint", type=Path, help="checkpoint directory")
    classify.add_argument("files", nargs="+", type=Path, help="image files (anything PIL opens)")
    classify.add_argument("--clinical", help="clinical text for every image")
    classify.add_argument("--device", default="cpu")
    classify.add_argument("--batch-size", type=int, default=8)
    classify.add_argument("--max-new-tokens", type=int, default=16)
    classify.add_argument("--no-text", action="store_true", help="label scores only, no text")
    classify.add_argument("--json", action="store_true", help="a JSON list, one entry per file")
    classify.set_defaults(handler=_classify)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def _init(args: argparse.Namespace) -> int:
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


def _info(args: argparse.Namespace) -> int:
    from mdf_model.configuration import MDFConfig
    from mdf_model.flops import estimate_flops
    from mdf_model.modeling import MDFModel, read_config

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


def _read_rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Image.DecompressionBombError as error:
        raise ValueError(str(error)) from error


def _classify(args: argparse.Namespace) -> int:
    from mdf_model.classifier import load_classifier

    try:
        classifier = load_classifier(args.checkpoint, device=args.device)
    except ValueError as error:
        return _fail(str(error))
    entries: list[dict[str, Any]] = []
    prepared = []
    for path in args.files:
        try:
            prepared.append((path, classifier.prepare(_read_rgb(path), args.clinical)))
        except (OSError, ValueError) as error:
            entries.append({"file": str(path), "error": str(error)})
    for start in range(0, len(prepared), args.batch_size):
        chunk = prepared[start : start + args.batch_size]
        results = classifier.classify_prepared(
            [item for _, item in chunk],
            generate_text=not args.no_text,
            max_new_tokens=args.max_new_tokens,
        )
        for (path, _), result in zip(chunk, results, strict=True):
            entries.append(
                {
                    "file": str(path),
                    "label": result.label,
                    "probabilities": result.probabilities,
                    "text": result.text,
                    "text_label": result.text_label,
                    "agrees": result.agrees,
                    "version_hash": classifier.version_hash,
                }
            )
    order = {str(path): i for i, path in enumerate(args.files)}
    entries.sort(key=lambda entry: order[entry["file"]])
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            if "error" in entry:
                print(f"{entry['file']}: error: {entry['error']}")
            else:
                p = entry["probabilities"][entry["label"]]
                print(f"{entry['file']}: {entry['label']} ({p:.3f}) text={entry['text']!r}")
    failed = any("error" in entry for entry in entries)
    return EXIT_SOME_FAILED if failed else EXIT_OK
