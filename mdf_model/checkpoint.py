"""The checkpoint directory format: content-hash manifest, strict weight files, atomic writes.

A checkpoint is a directory::

    mdf_config.json        MDFConfig
    unet.safetensors       U-Net (encoder, decoder, segmentation head)      [not in baseline]
    fusion.safetensors     skip projection, scaled cross-attention, FiLM   [not in baseline]
    processor/             tokenizer and MllamaProcessor (save_pretrained)
    base/                  the Mllama weights (save_pretrained), when they were fine-tuned
    manifest.json          sha256 and size of every file above

When the base weights are unchanged, ``base/`` is left out and the manifest records a reference
to the original base directory with the hashes of its weight files instead. The manifest hash
(the sha256 of the canonical JSON of the file table and base reference) is the checkpoint's
version id. Loading verifies every hash before reading any weight, so a corrupt, truncated or
swapped file is a `CheckpointError` naming that file, never a partial load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "Manifest",
    "load_module_strict",
    "save_module",
    "staging_directory",
    "verify_manifest",
    "write_manifest",
]

log = structlog.get_logger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mdf-checkpoint/1"
_CHUNK = 8 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint (or weight file) that cannot be loaded as it is; the message names the file."""


@dataclass(frozen=True)
class Manifest:
    version_hash: str
    files: dict[str, dict[str, Any]]
    base_reference: Path | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entries(root: Path, relative_paths: list[str]) -> dict[str, dict[str, Any]]:
    return {
        rel: {"sha256": _sha256(root / rel), "size": (root / rel).stat().st_size}
        for rel in sorted(relative_paths)
    }


def _version_hash(files: dict[str, Any], base_reference: dict[str, Any] | None) -> str:
    canonical = json.dumps(
        {"files": files, "base_reference": base_reference}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def base_weight_files(base_dir: Path) -> list[str]:
    """The files ``from_pretrained`` reads from a Hugging Face model directory."""
    names = [
        p.name
        for p in base_dir.iterdir()
        if p.is_file()
        and (
            p.name in ("config.json", "generation_config.json")
            or p.name.endswith((".safetensors", ".safetensors.index.json"))
        )
    ]
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise CheckpointError(f"{base_dir}: not a Hugging Face model directory with safetensors")
    return names


def write_manifest(directory: Path, *, base_reference: Path | None = None) -> str:
    """Hash every file of ``directory`` (and the referenced base), write the manifest, return
    the version hash."""
    files = _entries(
        directory,
        [
            p.relative_to(directory).as_posix()
            for p in directory.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME
        ],
    )
    reference = None
    if base_reference is not None:
        base_reference = base_reference.resolve()
        reference = {
            "path": str(base_reference),
            "files": _entries(base_reference, base_weight_files(base_reference)),
        }
    version = _version_hash(files, reference)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version_hash": version,
        "files": files,
        "base_reference": reference,
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return version


def _verify_files(root: Path, files: dict[str, Any]) -> None:
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{path}: {size} bytes, the manifest says {entry['size']} (truncated or replaced)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: content hash does not match the manifest (corrupt)")


def verify_manifest(directory: Path, *, base_dir: Path | None = None) -> Manifest:
    """Check every file against the manifest; ``base_dir`` relocates a referenced base."""
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing; {directory} is not an MDF checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        reference = manifest["base_reference"]
        recorded = manifest["version_hash"]
        if manifest["format"] != MANIFEST_FORMAT:
            raise CheckpointError(
                f"{manifest_path}: format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}"
            )
        tables = [files] if reference is None else [files, reference["files"]]
        for rel, entry in (item for table in tables for item in table.items()):
            if not isinstance(entry["sha256"], str) or not isinstance(entry["size"], int):
                raise TypeError(f"bad entry for {rel}")
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise CheckpointError(f"{manifest_path}: file {rel!r} lies outside the checkpoint")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: not a valid manifest ({error!r})") from error
    if _version_hash(files, reference) != recorded:
        raise CheckpointError(f"{manifest_path}: version hash does not match its file table")

    _verify_files(directory, files)
    unlisted = sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file()
        and p.name != MANIFEST_NAME
        and p.relative_to(directory).as_posix() not in files
    )
    if unlisted:
        log.warning("checkpoint.unlisted_files", directory=str(directory), files=unlisted)

    base_path = None
    if reference is not None:
        base_path = base_dir if base_dir is not None else Path(reference["path"])
        if not base_path.is_dir():
            raise CheckpointError(f"{base_path}: referenced base model directory not found")
        _verify_files(base_path, reference["files"])
    return Manifest(version_hash=recorded, files=files, base_reference=base_path)


def save_module(module: nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module_strict(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``: same keys, same shapes, or a CheckpointError."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from error
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: does not match the configured model; missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}, shape mismatches {mismatched[:5]}"
        )
    module.load_state_dict(state, strict=True)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give every file the mode an ordinary write would: some writers (safetensors among them)
    create files 0600, which a worker running as another user could not read."""
    mask = _current_umask()
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """Write a checkpoint into a sibling temporary directory and move it into place at the end,
    so a crash never leaves a half-written checkpoint under the target name."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
        _apply_umask(staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
