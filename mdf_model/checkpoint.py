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
swapped file is a `CheckpointError` naming that file, never a partial load. A file in the
directory that the manifest does not list makes the checkpoint invalid too: the loaders read
more than the files named above (a tokenizer's extra files, sharded weights), so an unlisted
file could change what is served without changing the version id.

The version id is computed from the manifest content that is parsed once and used to verify
the files, never taken from a second read, so a caller that expects a version (the worker,
from the database) compares it with exactly what was verified.
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

from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "Manifest",
    "load_module_strict",
    "read_verified",
    "save_module",
    "staging_directory",
    "verify_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mdf-checkpoint/1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a real one lists tens of files
_CHUNK = 8 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint (or weight file) that cannot be loaded as it is. The message names the file
    by its path inside the checkpoint, never the checkpoint's directory: it reaches a worker's
    log lines, and a site's directory names may identify someone."""


def _why(error: OSError) -> str:
    """An OS error's reason without the file name its text carries."""
    return error.strerror or type(error).__name__


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


def _directory_entries(directory: Path) -> list[str]:
    """Every entry under ``directory`` but the directories themselves, relative, without
    following links: files, links (to directories too), sockets and pipes alike."""
    entries = []
    for root, dirs, files in os.walk(directory):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        entries += [(here / n).relative_to(directory).as_posix() for n in [*files, *links]]
    return entries


def write_manifest(directory: Path, *, base_reference: Path | None = None) -> str:
    """Hash every file of ``directory`` (and the referenced base), write the manifest, return
    the version hash."""
    files = _entries(
        directory,
        [
            rel
            for rel in _directory_entries(directory)
            if rel != MANIFEST_NAME and (directory / rel).is_file()
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


def _verify_files(root: Path, files: dict[str, Any], where: str = "") -> None:
    """Every file of ``files`` under ``root`` as listed; errors name a file ``where`` + its
    path inside ``root``."""
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointError(f"{where}{rel}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{where}{rel}: {size} bytes, the manifest says {entry['size']} "
                "(truncated or replaced)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"{where}{rel}: content hash does not match the manifest (corrupt)"
            )


def _read_manifest(manifest_path: Path) -> bytes:
    try:
        with manifest_path.open("rb") as stream:
            raw = stream.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as error:
        raise CheckpointError(f"{MANIFEST_NAME}: missing; not an MDF checkpoint") from error
    except OSError as error:
        raise CheckpointError(f"{MANIFEST_NAME}: unreadable ({_why(error)})") from error
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES} bytes")
    return raw


def verify_manifest(
    directory: Path, *, base_dir: Path | None = None, expected_version: str | None = None
) -> Manifest:
    """Check every file against the manifest; ``base_dir`` relocates a referenced base.

    ``expected_version`` (the version id a database registered) refuses a checkpoint whose
    manifest was rewritten since, before any file is hashed. A file the manifest does not
    list is a `CheckpointError` naming it by its path inside the checkpoint.
    """
    manifest_path = directory / MANIFEST_NAME
    raw = _read_manifest(manifest_path)
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        reference = manifest["base_reference"]
        recorded = manifest["version_hash"]
        if manifest["format"] != MANIFEST_FORMAT:
            raise CheckpointError(
                f"{MANIFEST_NAME}: format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}"
            )
        tables = [files] if reference is None else [files, reference["files"]]
        for rel, entry in (item for table in tables for item in table.items()):
            if not isinstance(entry["sha256"], str) or not isinstance(entry["size"], int):
                raise TypeError(f"bad entry for {rel}")
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise CheckpointError(f"{MANIFEST_NAME}: file {rel!r} lies outside the checkpoint")
        version = _version_hash(files, reference)
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{MANIFEST_NAME}: not a valid manifest ({error!r})") from error
    if version != recorded:
        raise CheckpointError(f"{MANIFEST_NAME}: version hash does not match its file table")
    if expected_version is not None and version != expected_version:
        raise CheckpointError(
            f"{MANIFEST_NAME}: manifest hash {version} differs from the registered "
            f"{expected_version}: the checkpoint was replaced after it was registered"
        )

    unlisted = sorted(
        rel for rel in _directory_entries(directory) if rel != MANIFEST_NAME and rel not in files
    )
    if unlisted:
        raise CheckpointError(
            f"{unlisted[0]}: in the checkpoint but not listed in its manifest "
            f"({len(unlisted)} unlisted file(s))"
        )
    _verify_files(directory, files)

    base_path = None
    if reference is not None:
        base_path = base_dir if base_dir is not None else Path(reference["path"])
        if not base_path.is_dir():
            raise CheckpointError(f"{MANIFEST_NAME}: referenced base model directory not found")
        _verify_files(base_path, reference["files"], where="base model ")
    return Manifest(version_hash=version, files=files, base_reference=base_path)


def read_verified(directory: Path, manifest: Manifest, rel: str) -> bytes:
    """A listed file's bytes, checked against the manifest once more as they are read: what is
    parsed is what was verified, even if the file was replaced since `verify_manifest`."""
    entry = manifest.files.get(rel)
    if entry is None:
        raise CheckpointError(f"{rel}: not listed in the manifest")
    try:
        data = (directory / rel).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{rel}: unreadable ({_why(error)})") from error
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{rel}: changed while the checkpoint was being loaded")
    return data


def save_module(module: nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module_strict(module: nn.Module, path: Path, data: bytes | None = None) -> None:
    """Load a safetensors file (its ``data`` when already read) into ``module``: same keys,
    same shapes, or a CheckpointError."""
    try:
        state = load_file(str(path)) if data is None else load(data)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path.name}: unreadable safetensors file ({error})") from error
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
            f"{path.name}: does not match the configured model; missing keys {missing[:5]}, "
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
