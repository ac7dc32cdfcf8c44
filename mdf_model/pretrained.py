"""Loading and saving MDF models: the base Mllama from a local directory, and checkpoints.

As transformers keeps ``from_pretrained`` apart from the architectures it loads, this module
keeps the directory I/O apart from modeling.py (assembly, freezing, forward): `MDFModel` binds
`from_base`, `from_pretrained` and `save_pretrained` as its own methods, and the functions take
the model class (or model) first, so this module does not import modeling.py. The checkpoint
directory format itself (manifest, hashes, atomic writes) is checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoProcessor, MllamaForConditionalGeneration, ProcessorMixin

from mdf_model.checkpoint import (
    CheckpointError,
    load_module_strict,
    read_verified,
    save_module,
    staging_directory,
    verify_manifest,
    write_manifest,
)
from mdf_model.configuration import MDFConfig
from mdf_model.tiles import processor_tiles, set_processor_tiles

if TYPE_CHECKING:
    from mdf_model.modeling import MDFModel

__all__ = ["from_base", "from_pretrained", "read_config", "save_pretrained", "seeded"]

log = structlog.get_logger(__name__)

CONFIG_NAME = "mdf_config.json"
UNET_WEIGHTS = "unet.safetensors"
FUSION_WEIGHTS = "fusion.safetensors"
PROCESSOR_DIR = "processor"
BASE_DIR = "base"


def _named(error: BaseException, directory: Path, name: str) -> str:
    """A library's error text with ``directory`` called ``name``: the text may hold the path."""
    return str(error).replace(str(directory), name)


def _load_base(
    directory: Path, dtype: torch.dtype | None, name: str
) -> MllamaForConditionalGeneration:
    """``from_pretrained`` from a local directory, refusing anything but an exact match, and
    safetensors only: a pickled ``pytorch_model.bin`` is never read. Errors call the
    directory ``name``."""
    try:
        base, info = MllamaForConditionalGeneration.from_pretrained(
            directory,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype if dtype is not None else "auto",
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(
            f"{name}: cannot load the base model ({_named(error, directory, name)})"
        ) from error
    problems = {kind: keys for kind, keys in info.items() if keys}
    if problems:
        raise CheckpointError(f"{name}: base weights do not match config.json: {problems}")
    return base


def _load_processor(directory: Path, name: str) -> ProcessorMixin:
    try:
        return AutoProcessor.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{name}: cannot load the processor ({_named(error, directory, name)})"
        ) from error


def read_config(directory: Path, data: bytes | None = None) -> MDFConfig:
    """The configuration of a checkpoint directory (from ``data``, its verified bytes, when
    given; else read unverified)."""
    try:
        raw = (directory / CONFIG_NAME).read_bytes() if data is None else data
        return MDFConfig.from_dict(json.loads(raw))
    except OSError as error:
        raise CheckpointError(
            f"{CONFIG_NAME}: unreadable ({error.strerror or type(error).__name__})"
        ) from error
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{CONFIG_NAME}: not a valid MDF configuration ({error})") from error


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Deterministic initialisation without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _fusion_parts(model: MDFModel) -> nn.ModuleDict:
    # A view for fusion.safetensors; not registered, so the model's own keys do not change.
    return nn.ModuleDict(
        {"projection": model.projection, "fusion": model.fusion, "film": model.film}
    )


def from_base(
    cls: type[MDFModel],
    base_dir: str | Path,
    config: MDFConfig,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> MDFModel:
    """A new MDF model around a local Hugging Face Mllama directory (weights + processor).

    The U-Net (optionally from ``config.unet_encoder_weights``), projection, fusion and FiLM
    are initialised here; everything takes the base weights' dtype unless ``dtype`` is given.
    The processor fits photographs onto ``config.vision_tiles`` tiles (and is saved so).
    Returns the model in eval mode, like ``from_pretrained``.
    """
    base_dir = Path(base_dir)
    base = _load_base(base_dir, dtype, str(base_dir))
    processor = _load_processor(base_dir, str(base_dir))
    set_processor_tiles(processor, config.vision_tiles)
    weights = config.unet_encoder_weights
    with seeded(seed):
        model = cls(
            config,
            base,
            processor,
            base_reference=base_dir.resolve(),
            encoder_weights=None if weights is None else Path(weights),
        )
    model.to(device=device, dtype=base.dtype)
    log.info("model.built", preset=config.preset, dtype=str(base.dtype))
    return model.eval()


def from_pretrained(
    cls: type[MDFModel],
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    base_dir: str | Path | None = None,
    expected_manifest_sha256: str | None = None,
    vision_tiles: int | None = None,
) -> MDFModel:
    """Load a checkpoint directory after verifying its manifest (see checkpoint.py).

    ``base_dir`` points a checkpoint that refers to an external base model at a new location
    of that base; its files must still match the recorded hashes. ``expected_manifest_sha256``
    (the version id a database registered) refuses a checkpoint changed since, and
    ``vision_tiles`` (what the service serves with) a checkpoint that records another value,
    both before any weight is read. A checkpoint written before checkpoints recorded it is
    served with the tiles it was trained with (see `MDFConfig.from_dict`), whatever
    ``vision_tiles`` says: refusing it would refuse every model of an earlier release.
    Returns the model in eval mode.
    """
    directory = Path(directory)
    manifest = verify_manifest(
        directory,
        base_dir=None if base_dir is None else Path(base_dir),
        expected_version=expected_manifest_sha256,
    )
    data = read_verified(directory, manifest, CONFIG_NAME)
    config = read_config(directory, data)
    if vision_tiles is not None and config.vision_tiles != vision_tiles:
        if "vision_tiles" in json.loads(data):
            raise CheckpointError(
                f"{CONFIG_NAME}: trained with vision_tiles {config.vision_tiles}, "
                f"served with {vision_tiles}: its answers would differ from the ones it was "
                "validated with"
            )
        log.warning(
            "model.vision_tiles_unrecorded",
            version=manifest.version_hash,
            vision_tiles=config.vision_tiles,
            configured=vision_tiles,
        )

    weight_files = {name: (directory / name).is_file() for name in (UNET_WEIGHTS, FUSION_WEIGHTS)}
    for name, present in weight_files.items():
        if present == config.baseline:
            state = "present" if present else "missing"
            raise CheckpointError(
                f"{name}: {state}, but the configuration has baseline={config.baseline}"
            )
    included = directory / BASE_DIR
    if included.is_dir():
        base_path, base_name = included, BASE_DIR
    elif manifest.base_reference is not None:
        base_path, base_name = manifest.base_reference, "the referenced base model"
    else:
        raise CheckpointError(f"{BASE_DIR}: missing, and the manifest names no base model")

    processor = _load_processor(directory / PROCESSOR_DIR, PROCESSOR_DIR)
    if processor_tiles(processor) != config.vision_tiles:
        raise CheckpointError(
            f"{PROCESSOR_DIR}: fits a photograph onto {processor_tiles(processor)} "
            f"tiles, but {CONFIG_NAME} has vision_tiles {config.vision_tiles}"
        )
    base = _load_base(base_path, dtype, base_name)
    try:
        model = cls(
            config,
            base,
            processor,
            base_reference=manifest.base_reference,
        )
    except ValueError as error:
        raise CheckpointError(f"{CONFIG_NAME}: does not fit {base_name} ({error})") from error
    if not config.baseline:
        for module, name in ((model.unet, UNET_WEIGHTS), (_fusion_parts(model), FUSION_WEIGHTS)):
            load_module_strict(module, directory / name, read_verified(directory, manifest, name))
    model.to(device=device, dtype=base.dtype)
    model.version_hash = manifest.version_hash
    log.info("model.loaded", version=manifest.version_hash)
    return model.eval()


def save_pretrained(
    model: MDFModel, directory: str | Path, *, include_base: bool | None = None
) -> str:
    """Write a checkpoint directory (which must not exist, or be empty); return its version
    hash. ``include_base`` None copies the base weights unless they came unchanged from a
    base directory and the MLLM is frozen, in which case the manifest refers to that
    directory."""
    if model.processor is None:
        raise ValueError("this model has no processor (built without weights): cannot save")
    if include_base is None:
        include_base = model.base_reference is None or "mllm" not in model.frozen
    directory = Path(directory)
    with staging_directory(directory) as staging:
        model.config.to_json_file(staging / CONFIG_NAME)
        if not model.config.baseline:
            save_module(model.unet, staging / UNET_WEIGHTS)
            save_module(_fusion_parts(model), staging / FUSION_WEIGHTS)
        model.processor.save_pretrained(staging / PROCESSOR_DIR)
        if include_base:
            model.base.save_pretrained(staging / BASE_DIR)
        version = write_manifest(
            staging, base_reference=None if include_base else model.base_reference
        )
    log.info("model.saved", version=version, base=include_base)
    return version
