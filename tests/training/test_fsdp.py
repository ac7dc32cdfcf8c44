"""FSDP2 on this CPU: two processes over gloo, launched by torchrun, on the tiny preset.

The tolerance: one process over a global batch of 4 and two over its halves differ where a
batch statistic enters (the U-Net's batch norm, the standardisation of its patch features),
each rank computing it over its own half. Measured over 3 epochs: training losses within
0.8%, the validation answer loss within 0.6%, the validation segmentation loss within 9.3%
(in eval mode it uses the batch-norm running statistics, which each rank gathers from its
half and the ranks average); with the code of the README's table, 0.24%, 0.04% and 1.2%.
Against one process accumulating the same two half-batches the training loss agrees within
0.04% (see the README).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ModelVersion, TrainingRun
from db.session import session_factory
from mdf.settings import Settings
from mdf_model import load_classifier
from tests.in_process import mdf_command
from training.config import TrainConfig
from training.memory import estimate

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
FIT = ["-m", "tests.training.fsdp_fit"]
#: Relative differences allowed between one process and two (see the module docstring).
TOLERANCE = {"loss": 0.02, "lm_loss": 0.02, "seg_loss": 0.15}


def _fit(checkpoint: Path, out: Path, *args: str, nproc: int | None = None) -> dict:
    launcher = [*TORCHRUN, str(nproc)] if nproc else [sys.executable]
    command = [*launcher, *FIT, "--checkpoint", str(checkpoint), "--out", str(out), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return json.loads(out.read_text())


def _close(one: dict[str, float], two: dict[str, float]) -> bool:
    assert one.keys() == two.keys()
    return all(abs(two[k] - one[k]) <= TOLERANCE[k] * abs(one[k]) for k in one)


def test_two_processes_follow_one_with_the_same_global_batch_and_resume(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.safetensors"
    sharded = _fit(
        tiny_checkpoint, tmp_path / "fsdp.json", "--epochs", "2", "--state", str(state), nproc=2
    )
    single = _fit(tiny_checkpoint, tmp_path / "one.json", "--epochs", "2")
    for part in ("train", "validation"):
        for one, two in zip(single[part], sharded[part], strict=True):
            assert _close(one, two), (part, one, two)
    assert sharded["train"][1]["loss"] < sharded["train"][0]["loss"]

    # Rank 0 wrote the state one process writes: it resumes on two processes or on one.
    shutil.copyfile(state, tmp_path / "copy.safetensors")
    resumed = _fit(
        tiny_checkpoint, tmp_path / "r2.json", "--epochs", "3", "--state", str(state), nproc=2
    )
    alone = _fit(
        tiny_checkpoint,
        tmp_path / "r1.json",
        "--epochs",
        "3",
        "--state",
        str(tmp_path / "copy.safetensors"),
    )
    for history in (resumed, alone):
        assert history["epochs"] == 3 and history["train"][:2] == sharded["train"]
    assert _close(alone["train"][2], resumed["train"][2])
    assert _close(alone["validation"][2], resumed["validation"][2])


def test_dry_run_prints_the_memory_of_each_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    with mdf_command(capsys) as mdf:
        code, out, _ = mdf("train", "--dry-run", "--nproc", "4")
    assert code == 0 and "each of 4 GPUs (FSDP)" in out
    per_gpu = float(out.split("gpu_memory_gib:")[1])
    whole = estimate(TrainConfig()).total_gib  # 162.7 GiB on one GPU
    assert whole / 4 < per_gpu < whole / 4 + 10  # a quarter, plus the units gathered whole
    assert per_gpu < 70


def _train_config(tmp_path: Path, tiny_checkpoint: Path, **extra: object) -> Path:
    config = {
        "checkpoint": str(tiny_checkpoint),
        "output_dir": str(tmp_path / "runs"),
        "epochs": 1,
        "batch_size": 8,
        "image_only_eval": False,
        **extra,
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_mdf_train_nproc_writes_one_verified_checkpoint_from_rank_0(
    labelled_night: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = _train_config(tmp_path, tiny_checkpoint)
    done = subprocess.run(
        [sys.executable, "-m", "mdf.cli", "train", "--nproc", "2", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run 1: version") == 1  # rank 0 alone reports
    with session_factory(labelled_night.resolved_database_url)() as session:
        run = session.scalar(select(TrainingRun))
        version = session.scalar(select(ModelVersion))
        assert run.status == "finished" and run.challenger_version_id == version.id
        assert run.config["distributed"] == "fsdp"
    trained = load_classifier(version.path, expected_manifest_sha256=version.manifest_sha256)
    assert trained.model.unet is not None


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process of ``rank`` that torchrun, inside ``launcher``, started: read
    from /proc (its parent and its RANK variable), not from the ranks' shared stderr, where
    one process's line can land inside another's and no longer parse."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = next(
                int(line.split()[1])
                for line in status.read_text().splitlines()
                if line.startswith("PPid:")
            )
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue  # ended meanwhile, or not ours to read
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    return None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_killed_rank_fails_the_run_with_its_reason(
    labelled_night: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = _train_config(tmp_path, tiny_checkpoint, epochs=20)
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "mdf.cli", "train", "--nproc", "2", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert any("training_started" in line for line in process.stderr)
    victim = _rank_pid(process.pid, rank=1)
    assert victim is not None
    time.sleep(5)  # into the training loop
    os.kill(victim, signal.SIGKILL)
    _, rest = process.communicate(timeout=300)
    assert time.monotonic() - began < 600
    assert process.returncode != 0
    assert f"rank 1 (pid {victim}) ended by SIGKILL" in rest
    with session_factory(labelled_night.resolved_database_url)() as session:
        run = session.scalar(select(TrainingRun))
        assert run.status == "failed"
        assert "another process of the run" in run.error
