"""No pickle where a process reads files others can write: the trainer's resumable state is
safetensors + JSON, and no service package unpickles anything."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import EarlyStopping, TrainConfig, VesselStage
from training.run import load_for_training
from training.state import StateError
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mdf", "db", "scheduler", "worker", "training", "mdf_model")
CONFIG = TrainConfig(
    epochs=1,
    batch_size=4,
    early_stopping=EarlyStopping(patience=10),
    vessels=VesselStage(steps=0),  # the joint loop's state is what is saved and resumed
)


class Payload:
    """Unpickling this creates ``path``: what a crafted state file could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _training_set(classifier) -> tuple[list, list[str]]:
    from mdf.synthetic.fundus import generate_case

    cases = [generate_case(seed, size=96) for seed in range(4)]
    inputs = [classifier.prepare(c.image, c.clinical_text, seg_target=c.vessel_mask) for c in cases]
    return inputs, [case.label for case in cases]


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickled_state_is_never_executed_and_resume_refuses_it(
    tiny_checkpoint: Path, tmp_path: Path, writer: str
) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()  # the payload is live: unpickling it runs code

    marker, state = tmp_path / "executed", tmp_path / "state.safetensors"
    if writer == "pickle":
        state.write_bytes(pickle.dumps({"epoch": Payload(marker)}))
    else:
        torch.save({"epoch": Payload(marker)}, state)
    crafted = state.read_bytes()
    trainer = Trainer(load_for_training(tiny_checkpoint, CONFIG), CONFIG)

    with pytest.raises(StateError, match=r"not a training state this version can resume"):
        trainer.fit([], [], [], [], state=state)
    assert not marker.exists()
    assert state.read_bytes() == crafted  # refused, not overwritten


def test_a_safetensors_file_that_is_no_training_state_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    trainer = Trainer(load_for_training(tiny_checkpoint, CONFIG), CONFIG)
    with pytest.raises(StateError, match=r"no training state in its header"):
        trainer.restore_state(tiny_checkpoint / "unet.safetensors")


def test_a_saved_state_restores_everything_exactly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first = Trainer(load_for_training(tiny_checkpoint, CONFIG), CONFIG)
    inputs, targets = _training_set(first.classifier)
    history = first.fit(inputs, targets, inputs, targets)
    rng = np.random.default_rng(7)
    rng.random(3)
    first.save_state(tmp_path / "state.safetensors", 1, history, rng)

    second = Trainer(load_for_training(tiny_checkpoint, CONFIG), CONFIG)
    epoch, restored, restored_rng = second.restore_state(tmp_path / "state.safetensors")

    assert (epoch, restored) == (2, history)
    assert (second.watches, second.objective) == (first.watches, first.objective)
    np.testing.assert_array_equal(restored_rng.random(5), rng.random(5))
    trained = second.model.state_dict()
    assert all(torch.equal(trained[name], first.model.state_dict()[name]) for name in first.trained)
    a, b = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for index, values in a["state"].items():
        assert all(torch.equal(values[k], b["state"][index][k]) for k in values)
    assert first.best.copies.keys() == second.best.copies.keys()
    for component, copy in first.best.copies.items():
        assert all(torch.equal(t, second.best.copies[component][k]) for k, t in copy.items())
    # A tensor shared between components' copies is shared again, not duplicated.
    objective, unet = second.best.copies["answer"], second.best.copies["unet"]
    assert all(objective[k] is unet[k] for k in unet)


def _unpickling_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [n for n in names if n.split(".")[0] in {"pickle", "dill", "joblib"}]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = ast.unparse(node.func.value)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        call = f"{owner}.{node.func.attr}"
        if (
            (call == "torch.load" and keywords.get("weights_only") != "True")
            or (call in {"np.load", "numpy.load"} and keywords.get("allow_pickle") == "True")
            or call in {"yaml.load", "yaml.unsafe_load", "yaml.full_load"}
        ):
            found.append(call)
    return found


def test_no_service_package_unpickles_anything() -> None:
    offenders = {
        str(path.relative_to(ROOT)): calls
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (calls := _unpickling_calls(ast.parse(path.read_text())))
    }
    assert offenders == {}
    assert _unpickling_calls(ast.parse("torch.load(p, weights_only=False)")) == ["torch.load"]
