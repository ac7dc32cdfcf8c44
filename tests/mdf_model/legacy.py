"""Checkpoints as the release before ``vision_tiles`` (747dd33) wrote them: ``mdf_config.json``
without the field, the processor fitting a photograph onto Mllama's 4 tiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mdf_model.checkpoint import write_manifest


def with_processor_tiles(
    checkpoint: Path, target: Path, tiles: int, *, recorded: bool = True
) -> Path:
    """A copy of ``checkpoint`` whose processor fits a photograph onto ``tiles`` tiles, its
    configuration recording them, or, with ``recorded`` False, without the field, and a
    manifest that matches."""
    shutil.copytree(checkpoint, target)
    path = target / "processor" / "processor_config.json"
    processor = json.loads(path.read_text())
    processor["image_processor"]["max_image_tiles"] = tiles
    path.write_text(json.dumps(processor))
    path = target / "mdf_config.json"
    config = json.loads(path.read_text())
    if recorded:
        config["vision_tiles"] = tiles
    else:
        del config["vision_tiles"]
    path.write_text(json.dumps(config))
    write_manifest(target)
    return target


def released_before_vision_tiles(checkpoint: Path, target: Path) -> Path:
    """``checkpoint`` as the previous release wrote every checkpoint."""
    return with_processor_tiles(checkpoint, target, 4, recorded=False)
