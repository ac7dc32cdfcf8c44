"""The fine-tuning loop, with per-component early stopping.

The paper's U-Net converged near epoch 18 while the MLLM needed 55. Here each
component is watched on its own validation loss (the U-Net on the segmentation
loss where masks exist, the MLLM, fusion and FiLM on the answer loss) and is
frozen once it stops improving, while the others train on. Training ends when
every component has stopped or the epochs run out.

The validation loss can jump after its best epoch (measured on the tiny preset: 0.21 at
epoch 17, then 0.60, 0.95, 0.38), so best weights are kept as CPU copies. A component that
stops is put back to its own best epoch before it is frozen, and the others train on from
there. When training ends, everything is put back to the epoch with the best answer loss:
weights that were validated together. (Putting each component back to its own best epoch
instead combined a U-Net from epoch 15 with fusion from epoch 17, never validated together,
and the held-out AUROC fell from 0.82 to 0.71.)

The same loop runs in one process or sharded over the processes torchrun starts
(``distributed: fsdp``): everything that differs (which examples a rank takes, summing the
losses over ranks, gathering weights for the best copies and the state file) goes through
the engine of distributed.py. With ``strategy: lora`` the language model trains through
peft adapters (lora.py), merged into its weights when training ends.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from tqdm import tqdm

from training import augment, distributed, lora, vessels
from training import state as saved
from training.config import EarlyStopping, TrainConfig

log = structlog.get_logger(__name__)

OBJECTIVE = "answer"  # best-weights entry for everything trained, at the best answer loss

#: The losses of a forward pass that are reported per epoch.
LOSSES = ("loss", "lm_loss", "seg_loss")

#: Which validation loss decides when each trainable component has converged.
MONITORS = {"unet": "seg_loss", "fusion": "lm_loss", "film": "lm_loss", "mllm": "lm_loss"}


@dataclass
class ComponentWatch:
    """Early stopping state of one component."""

    monitor: str
    best: float = math.inf
    best_epoch: int = 0
    stopped_at: int | None = None

    def update(self, epoch: int, value: float | None, stopping: EarlyStopping) -> bool:
        """Record this epoch's loss; True when the component has just converged."""
        if self.stopped_at is not None or value is None:
            return False
        if value < self.best - stopping.min_delta:
            self.best, self.best_epoch = value, epoch
        elif epoch - self.best_epoch >= stopping.patience and epoch >= stopping.min_epochs:
            self.stopped_at = epoch
            return True
        return False


class BestWeights:
    """CPU copies of each component's tensors (named as in the model's state dict) from its
    best epoch; only the named tensors are kept, so a partly trained 11B model's copy is
    the size of what trains, and the copies never take accelerator memory. With a sharded
    model rank 0 keeps the full copies and the other ranks only which were made."""

    def __init__(
        self,
        model: torch.nn.Module,
        keys: Mapping[str, Sequence[str]],
        engine: distributed.Local | None = None,
    ):
        self.model = model
        self.keys = keys
        self.engine = engine or distributed.Local()
        self.copies: dict[str, dict[str, torch.Tensor]] = {}

    def remember(self, components: Sequence[str]) -> None:
        """Copy the current weights of ``components``; a tensor several of them name is
        copied once and shared, so an epoch that improves every component (and the answer
        loss) copies each trained tensor once, not once per entry."""
        if not components:
            return
        needed = {key for component in components for key in self.keys[component]}
        copied = self.engine.copy_state(self.model, needed)
        for component in components:
            self.copies[component] = {
                key: copied[key] for key in self.keys[component] if key in copied
            }

    def restore(self, component: str) -> bool:
        """Put the component's best weights back; False when none were remembered."""
        copy = self.copies.get(component)
        if copy is None:
            return False
        self.engine.load_state(self.model, copy)
        return True


@dataclass
class History:
    """Per-epoch mean losses, for the report's curves, and the epoch the final weights come
    from."""

    train: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    stopped: dict[str, int | None] = field(default_factory=dict)
    restored_epoch: int | None = None  # the epoch the final weights come from
    epochs: int = 0


def _batches(n: int, size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and config.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def learning_rate_factor(epoch: int, epochs: int, schedule: str) -> float:
    """The share of the configured learning rates used in ``epoch`` (1-based). The cosine
    schedule starts at 1 and ends near 0, so the last epochs settle instead of jumping
    between minima (the tiny preset's answer loss jumped 0.21 -> 0.95 at a constant rate)."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def apply_strategy(model, strategy: str) -> None:
    """Narrow what of the MLLM trains, for models too large to fine-tune whole.

    ``cross_attention`` trains only the base model's cross-attention layers (where
    fusion happens) besides the U-Net, fusion and FiLM; ``lora`` only the LoRA adapters
    of its language model (once lora.attach has put them in); ``frozen_mllm`` none of it.
    """
    if strategy == "full":
        return
    model.set_frozen(model.frozen | {"mllm"})
    if strategy == "cross_attention":
        layers = model.base.model.language_model.layers
        for index in model.base.config.text_config.cross_attention_layers:
            for parameter in layers[index].parameters():
                parameter.requires_grad_(True)
    elif strategy == "lora":
        for name, parameter in model.base.named_parameters():
            if lora.is_adapter(name):
                parameter.requires_grad_(True)


class Trainer:
    def __init__(self, classifier, config: TrainConfig):
        self.classifier = classifier
        self.model = classifier.model
        self.config = config
        self.engine = distributed.engine(config)
        self.adapters = None
        if config.strategy == "lora":
            self.adapters = lora.attach(self.model, config.lora)
            apply_strategy(self.model, config.strategy)
        self.watches = {
            name: ComponentWatch(MONITORS[name])
            for name in MONITORS
            if any(p.requires_grad for p in self.model.component_parameters(name))
        }
        self.trained = {name for name, p in self.model.named_parameters() if p.requires_grad}
        keys = self._component_keys()
        self.engine.shard(self.model)  # names stay; parameters become shards
        self.device = self.model.device
        self.best = BestWeights(
            self.model, keys | {OBJECTIVE: sorted(set().union(*keys.values()))}, self.engine
        )
        self.objective = ComponentWatch("lm_loss")  # the epoch the final weights come from
        # torch's fused AdamW updates every parameter in one kernel, on the CPU too: a tiny
        # step's update took 18 ms instead of 68 (one thread); FSDP's sharded parameters keep
        # the default implementation.
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(config.learning_rates),
            weight_decay=config.weight_decay,
            fused=config.distributed == "none",
        )
        self.base_rates = [group["lr"] for group in self.optimizer.param_groups]

    def _component_keys(self) -> dict[str, list[str]]:
        """Per watched component, the state-dict names of its trained parameters and of
        the buffers of its modules (batch-norm and standardisation statistics move too)."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        state = self.model.state_dict()  # without the non-persistent buffers
        buffers = [name for name, _ in self.model.named_buffers() if name in state]
        keys = {}
        for component in self.watches:
            parameters = [names[id(p)] for p in self.model.component_parameters(component)]
            roots = {name.split(".")[0] for name in parameters}
            keys[component] = [name for name in parameters if name in self.trained] + [
                name for name in buffers if name.split(".")[0] in roots
            ]
        return keys

    def _restore_best(self, names: list[str]) -> None:
        for name in names:
            if self.best.restore(name):
                watch = self.watches[name]
                log.info(
                    "component_restored", component=name, epoch=watch.best_epoch, loss=watch.best
                )

    def _freeze(self, names: list[str]) -> None:
        self.model.set_frozen(self.model.frozen | set(names))
        mllm = self.watches.get("mllm")
        if mllm is not None and mllm.stopped_at is None:
            apply_strategy(self.model, self.config.strategy)  # set_frozen reset it

    def _losses(self, inputs, targets: Sequence[str], indices: np.ndarray) -> object:
        """The model's losses on ``inputs[i]`` for i in ``indices`` (a sequence or a mapping)."""
        batch = [inputs[i] for i in indices]
        model_inputs = self.classifier.training_inputs(batch, [targets[i] for i in indices])
        with _autocast(self.config, self.device):
            return self.model(model_inputs.to(self.device))

    def _epoch(self, inputs, targets, rng) -> dict[str, float]:
        """One pass over the training set. Each step takes one global batch; a rank takes
        its share of it, weighted so that the gradient averaged over ranks is the batch's."""
        self.model.train()
        sums: dict[str, list[float]] = {name: [] for name in LOSSES}
        steps = list(_batches(len(inputs), self.config.batch_size, rng))
        progress = tqdm(steps, disable=not sys.stderr.isatty(), leave=False, desc="train")
        self.optimizer.zero_grad(set_to_none=True)
        for step, indices in enumerate(progress, start=1):
            share = self.engine.share(indices)
            batch = augment.randomly_flipped(
                inputs, indices, share.indices, rng, self.config.augment
            )
            output = self._losses(batch, targets, share.indices)
            (output.loss * share.weight / self.config.grad_accumulation).backward()
            if step % self.config.grad_accumulation == 0 or step == len(steps):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses = self.engine.mean({name: getattr(output, name) for name in LOSSES}, share)
            for name, value in losses.items():
                sums[name].append(value)
        self.engine.sync_buffers(self.model)
        return {k: v for k, v in ((k, _mean(v)) for k, v in sums.items()) if v is not None}

    @torch.no_grad()
    def validate(self, inputs, targets) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, list[float]] = {name: [] for name in LOSSES}
        for indices in _batches(len(inputs), self.config.batch_size, None):
            share = self.engine.share(indices)
            output = self._losses(inputs, targets, share.indices)
            losses = self.engine.mean({name: getattr(output, name) for name in LOSSES}, share)
            for name, value in losses.items():
                sums[name].append(value)
        return {k: v for k, v in ((k, _mean(v)) for k, v in sums.items()) if v is not None}

    def save_state(
        self, path: Path, epoch: int, history: History, rng: np.random.Generator
    ) -> None:
        """Everything needed to continue after ``epoch``: trained weights (not the frozen
        ones), optimizer, early-stopping state, best weights, history and the shuffling
        generator, as safetensors and JSON (see state.py). A sharded model's state is
        gathered and written by rank 0 alone, as one process writes it."""
        buffers = {name for name, _ in self.model.named_buffers()}
        kept = self.engine.copy_state(self.model, self.trained | buffers)
        optimizer_state = self.engine.optimizer_state(self.model, self.optimizer)
        if not self.engine.leader:
            return
        weights = {f"model/{name}": tensor for name, tensor in kept.items()}
        optimizer_tensors, optimizer = saved.split_optimizer(optimizer_state)
        best_tensors, best = saved.split_shared(self.best.copies, "best")
        document = {
            "epoch": epoch,
            "optimizer": optimizer,
            "watches": {name: asdict(watch) for name, watch in self.watches.items()},
            "objective": asdict(self.objective),
            "best": best,
            "history": asdict(history),
            "rng": rng.bit_generator.state,
        }
        saved.save(path, weights | optimizer_tensors | best_tensors, document)

    def restore_state(self, path: Path) -> tuple[int, History, np.random.Generator]:
        """Continue from a state `save_state` wrote; a StateError for anything else."""
        # On the CPU: loading copies the weights and optimizer state to the model's device,
        # and the best copies stay where they belong.
        tensors, state = saved.load(path)
        weights = saved.with_prefix(tensors, "model")
        missing = set(weights) - set(self.model.state_dict())
        if missing:
            raise saved.StateError(
                f"{path}: state of another model ({len(missing)} unknown tensors)"
            )
        try:
            self.engine.load_state(self.model, weights)
            self.engine.load_optimizer_state(
                self.model, self.optimizer, saved.join_optimizer(tensors, state["optimizer"])
            )
            self.watches = {name: ComponentWatch(**w) for name, w in state["watches"].items()}
            self.objective = ComponentWatch(**state["objective"])
            best = saved.join_shared(tensors, state["best"], "best")
            self.best.copies = best if self.engine.leader else {name: {} for name in best}
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
            epoch, history = int(state["epoch"]), History(**state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise saved.StateError(f"{path}: an incomplete training state ({error})") from error
        stopped = [name for name, w in self.watches.items() if w.stopped_at is not None]
        if stopped:
            self._freeze(stopped)
        # The run's folder and file, not the data directory above them (no path in a log line).
        log.info("training_resumed", after_epoch=epoch, state=f"{path.parent.name}/{path.name}")
        return epoch + 1, history, rng

    def fit(
        self, train_inputs, train_targets, val_inputs, val_targets, state: Path | None = None
    ) -> History:
        """Train; with ``state``, continue from it if it exists and save it every epoch.
        Ends with an ordinary model: adapters merged, a sharded model gathered (on rank 0,
        as the classifier's model)."""
        with self.engine.guard():
            history = self._fit(train_inputs, train_targets, val_inputs, val_targets, state)
            self.model = self.engine.unshard(self.classifier)
        if any(name.startswith("base.") for name in self.trained):
            # The MLLM's weights are no longer those of the base directory the checkpoint
            # may refer to: a checkpoint saved from here must carry them.
            self.model.base_reference = None
        self.model.eval()
        return history

    def _fit(self, train_inputs, train_targets, val_inputs, val_targets, state) -> History:
        history, first = History(), 1
        rng = np.random.default_rng(self.config.seed)
        if state is not None and state.exists():
            first, history, rng = self.restore_state(state)
        else:
            vessels.learn(self.model, train_inputs, self.config)  # the U-Net on masks first
        for epoch in range(first, self.config.epochs + 1):
            factor = learning_rate_factor(epoch, self.config.epochs, self.config.lr_schedule)
            for group, base in zip(self.optimizer.param_groups, self.base_rates, strict=True):
                group["lr"] = base * factor
            history.train.append(self._epoch(train_inputs, train_targets, rng))
            validation = self.validate(val_inputs, val_targets)
            history.validation.append(validation)
            history.epochs = epoch
            converged, improved = [], []
            for name, watch in self.watches.items():
                if watch.update(
                    epoch,
                    validation.get(watch.monitor, validation.get("lm_loss")),
                    self.config.early_stopping,
                ):
                    converged.append(name)
                elif watch.best_epoch == epoch:
                    improved.append(name)
            answer = validation.get("lm_loss")
            if answer is not None and answer < self.objective.best:
                self.objective.best, self.objective.best_epoch = answer, epoch
                improved.append(OBJECTIVE)
            self.best.remember(improved)  # as validated, before any component goes back
            if converged:
                self._restore_best(converged)
                self._freeze(converged)
            log.info(
                "epoch_done",
                epoch=epoch,
                train=history.train[-1],
                validation=validation,
                converged=converged,
            )
            if state is not None:
                self.save_state(state, epoch, history, rng)
            if all(w.stopped_at is not None for w in self.watches.values()):
                break
        history.stopped = {name: w.stopped_at for name, w in self.watches.items()}
        if self.best.restore(OBJECTIVE):
            best = self.objective
            history.restored_epoch = best.best_epoch
            log.info("weights_restored", epoch=best.best_epoch, lm_loss=best.best)
        if self.adapters is not None:
            self.adapters.merge_and_unload()  # in place: plain nn.Linear layers again
            self.adapters = None
            log.info("adapters_merged")
        return history
