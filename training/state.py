"""The trainer's resumable state on disk: tensors in safetensors, everything else JSON.

No pickle: a resumed run reads a state file that another run (or anyone who can write the
run directory) wrote, and unpickling executes whatever the file says. safetensors holds only
tensors; the rest (epoch, early-stopping state, history, the optimizer's hyperparameters,
the shuffling generator) is one JSON document in the file's header, so a state is still one
file, replaced atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "mdf-training-state/1"
_HEADER_KEY = "mdf_training_state"


class StateError(ValueError):
    """A file that is not a training state this version can resume from."""


def _untied(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two sharing memory (safetensors refuses tied tensors; loading
    copies the values into the model, whose own ties stay)."""
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(pointer)
        result[name] = tensor
    return result


def save(path: Path, tensors: Mapping[str, torch.Tensor], document: dict[str, Any]) -> None:
    """Write the state; a crash mid-write leaves the previous one in place."""
    partial = path.with_name(f"{path.name}.partial")
    header = json.dumps({"format": FORMAT, **document})
    save_file(_untied(tensors), str(partial), metadata={_HEADER_KEY: header})
    partial.replace(path)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON document of a state file, on the CPU, or a StateError."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as stream:
            header = (stream.metadata() or {}).get(_HEADER_KEY)
            tensors = {name: stream.get_tensor(name) for name in stream.keys()}  # noqa: SIM118 (not a dict)
        document = json.loads(header) if header is not None else None
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        document, tensors = None, {}
        reason = str(error)
    else:
        reason = "no training state in its header"
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(
            f"{path}: not a training state this version can resume ({reason}); states that "
            "earlier versions pickled (state.pt) are never read: start the run afresh"
        )
    return tensors, document


def split_optimizer(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict()`` as tensors named ``optimizer/<param>/<name>`` and a
    JSON document of the rest (hyperparameters, any non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"state": other, "param_groups": state["param_groups"]}


def join_optimizer(tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any]) -> dict:
    """The inverse of `split_optimizer`, for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {
        int(index): dict(values) for index, values in document["state"].items()
    }
    for key, tensor in with_prefix(tensors, "optimizer").items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = tensor
    groups = [  # JSON made the hyperparameter pairs (betas) lists; they are tuples
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in document["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def split_shared(
    copies: Mapping[str, Mapping[str, torch.Tensor]], prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """Named tensor sets whose tensors may be shared between sets: each tensor once, as
    ``<prefix>/<n>``, and a JSON table set -> name -> n, so loading shares them again."""
    numbers: dict[int, int] = {}
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, dict[str, int]] = {}
    for group, named in copies.items():
        for name, tensor in named.items():
            if id(tensor) not in numbers:
                numbers[id(tensor)] = len(numbers)
                tensors[f"{prefix}/{numbers[id(tensor)]}"] = tensor
            table.setdefault(group, {})[name] = numbers[id(tensor)]
    return tensors, table


def join_shared(
    tensors: Mapping[str, torch.Tensor], table: Mapping[str, Mapping[str, int]], prefix: str
) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse of `split_shared`."""
    return {
        group: {name: tensors[f"{prefix}/{n}"] for name, n in named.items()}
        for group, named in table.items()
    }


def with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``<prefix>/...``, without the prefix."""
    start = f"{prefix}/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
