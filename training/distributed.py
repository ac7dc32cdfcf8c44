"""Fine-tuning across processes with torch.distributed: FSDP2 shards, one data order, one writer.

torchrun starts the processes (``mdf train --nproc N`` starts torchrun; the README gives the
plain torchrun line). Rank 0 carries the training run as one process would: database rows,
evaluation, the checkpoint, promotion. Each time it starts a fine-tuning (`lead`, called by
``training.run.train_on``) it sends the other ranks the same job as JSON (start checkpoint,
examples, configuration, state file); they load the model, prepare the same images and join
`Trainer.fit` (`follow`), where the model is sharded with FSDP2's ``fully_shard``.

Inside the loop (`Sharded`) every rank draws the same shuffled order from the one seed, takes
its slice of each global batch and weights its loss by its share of the batch, so the
gradient FSDP averages is the global batch's. Losses are summed over the ranks before early
stopping looks at them, so every rank takes the same decisions. The training state, the
best weights and the final weights are gathered to rank 0, which alone writes them, in the
files one process writes: a run can resume on another number of processes.

What one process computes over a global batch and what N compute over its slices differ only
where a batch statistic enters (batch norm in the U-Net, the standardisation of U-Net patch
features): see the tolerance in tests/training/test_fsdp.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from training.config import TrainConfig
from training.splits import Example

log = structlog.get_logger(__name__)

#: How long a rank waits in one collective: the others wait for rank 0's next job while it
#: evaluates and saves, which on the 11B model takes a while. A rank that dies is noticed at
#: once (its connections close); this bounds only a rank that hangs.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class RankFailed(RuntimeError):
    """This process stopped because another process of the run failed or torchrun stopped it."""


def under_torchrun() -> bool:
    """Whether this process is one of those torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Share:
    """One rank's part of a global batch."""

    indices: np.ndarray  # its examples; a stand-in example when it has none (count 0)
    weight: float  # factor on its loss, so that the averaged gradient is the batch's
    count: int  # examples that count towards the reported losses


class Local:
    """One process: the model as it is; nothing to share, gather or broadcast."""

    rank, world, leader = 0, 1, True

    def shard(self, model: nn.Module) -> None:
        pass

    def share(self, indices: np.ndarray) -> Share:
        return Share(indices, 1.0, len(indices))

    def mean(self, losses: Mapping[str, torch.Tensor | None], share: Share) -> dict[str, float]:
        """The batch's losses (those computed)."""
        return {name: float(v.detach()) for name, v in losses.items() if v is not None}

    def sync_buffers(self, model: nn.Module) -> None:
        pass

    def copy_state(self, model: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
        """CPU copies of the named state-dict tensors (on rank 0; nothing elsewhere)."""
        return {
            name: tensor.detach().to("cpu", copy=True)
            for name, tensor in model.state_dict().items()
            if name in names
        }

    def load_state(self, model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put the given tensors (rank 0's; the others pass nothing) into the model."""
        model.load_state_dict(tensors, strict=False)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` as one process has it (on rank 0; empty elsewhere)."""
        return optimizer.state_dict()

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        optimizer.load_state_dict(state)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        yield

    def unshard(self, classifier: Any) -> nn.Module:
        """The trained model as one ordinary module, on rank 0 (the classifier's from now)."""
        return classifier.model


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP all-gathers one at a time: each decoder layer of the language model
    and of the vision tower, the token embedding and the output head (about a tenth of the
    11B model). What is left (the U-Net, fusion, FiLM, projections, norms) forms the root
    unit, gathered for a whole forward and backward. Each must be called as a module: a
    unit whose parameters are used without its ``forward`` would stay sharded."""
    base = model.base
    vision = base.model.vision_model
    text = base.model.language_model
    return [
        *text.layers,
        *vision.transformer.layers,
        *vision.global_transformer.layers,
        text.embed_tokens,
        base.lm_head,
    ]


def _order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's numbering (groups in order, params in order)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _numbered(state: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """A state keyed by parameter names (torch.distributed.checkpoint's) keyed by number,
    as ``optimizer.state_dict()`` is: the state file one process writes."""
    number = {name: i for i, name in enumerate(order)}
    return {
        "state": {number[name]: values for name, values in state["state"].items()},
        "param_groups": [
            {**group, "params": [number[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _named(state: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """The inverse of `_numbered`."""
    return {
        "state": {order[int(i)]: values for i, values in state["state"].items()},
        "param_groups": [
            {**group, "params": [order[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)


class Sharded(Local):
    """The processes of a torchrun launch, the model sharded over them with FSDP2."""

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed: fsdp runs in the processes torchrun starts: "
                "use `mdf train --nproc N` (or the README's torchrun line)"
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.leader = self.rank == 0
        self.device = _collective_device()

    def shard(self, model: nn.Module) -> None:
        for parameter in model.parameters():
            # FSDP shards contiguous tensors only; the U-Net keeps channels-last weights.
            parameter.data = parameter.data.contiguous()
        for module in shard_units(model):
            fully_shard(module)
        fully_shard(model)

    def share(self, indices: np.ndarray) -> Share:
        mine = np.array_split(indices, self.world)[self.rank]  # contiguous, as micro-batches
        if len(mine) == 0:  # a last batch smaller than the ranks: join with weight 0
            return Share(indices[:1], 0.0, 0)
        return Share(mine, len(mine) * self.world / len(indices), len(mine))

    def mean(self, losses: Mapping[str, torch.Tensor | None], share: Share) -> dict[str, float]:
        rows = [
            [float(v.detach()) * share.count, share.count] if v is not None else [0.0, 0.0]
            for v in losses.values()
        ]
        sums = torch.tensor(rows, dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        return {name: s / n for name, (s, n) in zip(losses, sums.tolist(), strict=True) if n}

    def sync_buffers(self, model: nn.Module) -> None:
        """Average the batch-norm and standardisation statistics, which each rank moved on
        its own slices (FSDP shards parameters, not buffers)."""
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.world)

    def copy_state(self, model: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
        state = get_model_state_dict(model, options=_FULL)  # full tensors on rank 0 only
        return {name: tensor for name, tensor in state.items() if name in names}

    def load_state(self, model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        set_model_state_dict(model, dict(tensors) if self.leader else {}, options=_FROM_RANK0)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        state = get_optimizer_state_dict(model, optimizer, options=_FULL)
        return _numbered(state, _order(model, optimizer)) if self.leader else {}

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        # Every rank read the state file: each takes its own shard of the full state.
        named = _named(state, _order(model, optimizer))
        set_optimizer_state_dict(
            model, optimizer, named, options=StateDictOptions(full_state_dict=True)
        )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Name what stopped training: a lost peer (its connections closed) or torchrun's
        SIGTERM after another rank failed. The first failure disarms SIGTERM, so that rank
        0 can record the run as failed before it exits."""
        try:
            yield
        except BaseException as error:
            _disarm()
            if isinstance(error, RankFailed) or not _lost_peer(error):
                raise
            raise RankFailed(
                f"training process {self.rank} of {self.world} lost another process of "
                f"the run ({type(error).__name__}: {str(error).split('. ')[0][:300]})"
            ) from error

    def unshard(self, classifier: Any) -> nn.Module:
        """Gather the full weights to rank 0 and put them into a new unsharded model there,
        which becomes the classifier's (for evaluation and `save`). Non-persistent buffers
        (rotary frequencies) are not in the state dict: they are copied over."""
        from mdf_model import MDFModel

        model = classifier.model
        state = get_model_state_dict(model, options=_FULL)
        if not self.leader:
            return model
        dtype = next(model.parameters()).dtype
        plain = MDFModel.from_config(model.config, device="meta", dtype=dtype)
        plain.to_empty(device=model.device)
        plain.load_state_dict(state)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                plain.get_buffer(name).copy_(buffer)
        plain.processor, plain.base_reference = model.processor, model.base_reference
        plain.version_hash = model.version_hash
        plain.set_frozen(model.frozen)
        classifier.model = plain
        return plain


def _lost_peer(error: BaseException) -> bool:
    """Whether a collective failed: NCCL raises DistError, gloo a RuntimeError naming its
    transport ("[.../gloo/transport/tcp/pair.cc] Read error ... Connection reset by peer")."""
    return isinstance(error, dist.DistError) or "gloo/transport" in str(error)


def engine(config: TrainConfig) -> Local:
    """How the trainer's model is held: whole in this process, or sharded with FSDP2."""
    return Sharded() if config.distributed == "fsdp" else Local()


# ------------------------------------------------------------------- processes and jobs
def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(document: Any) -> Any:
    """Rank 0's JSON document, on every rank (no pickle between the processes either)."""
    device = _collective_device()
    data = json.dumps(document).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().numpy()))


def lead(start: Path, examples: Sequence[Example], config: TrainConfig, state: Path | None):
    """On rank 0 of a distributed run: send the other ranks this fine-tuning to join."""
    if config.distributed != "fsdp" or not dist.is_initialized() or dist.get_rank() != 0:
        return
    _broadcast(
        {
            "start": str(start),
            "examples": [asdict(example) for example in examples],
            "config": config.model_dump(mode="json"),
            "state": None if state is None else str(state),
        }
    )


def follow(device: str) -> None:
    """On the other ranks: join each fine-tuning rank 0 sends until it sends none."""
    from training.run import train_on

    while (job := _broadcast(None)) is not None:
        config = TrainConfig.model_validate(job["config"]).model_copy(update={"device": device})
        examples = [Example(**example) for example in job["examples"]]
        state = None if job["state"] is None else Path(job["state"])
        train_on(Path(job["start"]), examples, config, state)


def _stop(signum: int, frame: object) -> None:
    _disarm()
    raise RankFailed("torchrun stopped this process: another process of the run failed")


def _disarm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def local_device(configured: str) -> str:
    """This rank's device: its own GPU (LOCAL_RANK) where CUDA is configured, else the CPU."""
    if configured.startswith("cuda"):
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return "cpu"


def run_worker(config: TrainConfig, settings: Any) -> Any:
    """One torchrun process: rank 0 runs the training run and returns its result; the
    others join its fine-tunings and return None."""
    from training.run import train_and_evaluate

    device = local_device(config.device or settings.device)
    config = config.replaced(device=device, distributed="fsdp")
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.startswith("cuda") else "gloo", timeout=COLLECTIVE_TIMEOUT
    )
    signal.signal(signal.SIGTERM, _stop)
    log.info("distributed_process_started", rank=dist.get_rank(), pid=os.getpid())
    try:
        if dist.get_rank() != 0:
            follow(device)
            return None
        result = train_and_evaluate(config, settings)
        _broadcast(None)
        return result
    finally:
        dist.destroy_process_group()


def describe(failures: Mapping[int, Any]) -> str:
    """torchrun's failed processes, one clause each, the likely cause first: those a
    signal ended (SIGKILL: killed, out of memory), then those that exited with an error
    (often because they lost the first), then those torchrun stopped with SIGTERM."""

    def clause(rank: int, failure: Any) -> str:
        if failure.exitcode < 0:
            return f"rank {rank} (pid {failure.pid}) ended by {failure.signal_name()}"
        return f"rank {rank} (pid {failure.pid}) exited with code {failure.exitcode}"

    def order(rank: int) -> tuple[int, int]:
        code = failures[rank].exitcode
        return (2 if code == -signal.SIGTERM else 0 if code < 0 else 1), rank

    return "; ".join(clause(rank, failures[rank]) for rank in sorted(failures, key=order))


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``python -m mdf.cli ARGV`` in ``nproc`` processes under torchrun (its own
    launcher, in this process); a failed process raises ValueError naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "mdf.cli", *argv]
    )
    try:
        run(args)
    except ChildFailedError as error:
        raise ValueError(f"distributed training failed: {describe(error.failures)}") from error
