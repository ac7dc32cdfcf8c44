"""The demo ``make demo`` runs: a synthetic night through ``mdf run-batch``, as real processes.

1. A tiny MDF-MLLM model trained briefly on a labelled synthetic history, or the one an
   earlier run trained, kept in a cache keyed by the model and training sources and the
   training parameters (any change there trains again).
2. A fresh database and embedded Redis in ``ROOT/data``; the trained checkpoint is
   registered and promoted there, so the workers serve it.
3. A synthetic night in ``ROOT/inbox`` (JPEG and DICOM, clinical text for some patients,
   and files a site sends by mistake) ingested, classified and summarised by
   ``mdf run-batch``; the exit status is its exit status.

Every step runs in ``ROOT`` with only the ``MDF_`` variables set here, so neither the
caller's environment nor a ``.env`` file can point the demo at a real database.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.model_versions import promote, register_version
from db.models import Image, ImagePath, ModelVersion, Prediction
from db.session import session_factory
from db.stored_path import from_stored
from mdf.broker import stop_embedded_redis
from scheduler.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]
#: The packages a trained checkpoint depends on, besides pyproject.toml and the parameters
#: (``mdf synth`` draws the labelled history with mdf.synthetic).
MODEL_PACKAGES = ("mdf_model", "training", "mdf.synthetic")
NIGHT_BATCH = "demo-night"
#: The training workspace's pseudonym key. Patients are split into training, validation and
#: held-out sets by pseudonym, so a key drawn afresh each time (SQLite's default) trained each
#: fresh demo on other images; this one keeps the split, and with it the model, the same.
#: It pseudonymises only the synthetic history, in a workspace deleted after training.
HISTORY_KEY = hashlib.sha256(b"mdf demo: the synthetic labelled history").hexdigest()


def started(root: Path, data_dir: Path, *args: str, **settings: str) -> subprocess.Popen[bytes]:
    """Start one ``mdf`` command in ``root`` against ``data_dir`` (`finished` waits for it)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MDF_")}
    env.update(
        MDF_DATA_DIR=str(data_dir),
        MDF_LOG_LEVEL="WARNING",
        **settings,
    )
    print(f"\n$ mdf {' '.join(shown(Path(a)) if os.sep in a else a for a in args)}")
    return subprocess.Popen([sys.executable, "-m", "mdf.cli", *args], cwd=root, env=env)


def finished(command: subprocess.Popen[bytes]) -> None:
    """Wait for a started command; stop the demo if it failed."""
    with command:
        try:
            code = command.wait()
        except KeyboardInterrupt:  # the command got the Ctrl-C too: let it stop its workers
            code = command.wait()
    if code:
        raise SystemExit(code)


def mdf(root: Path, data_dir: Path, *args: str, **settings: str) -> None:
    """Run one ``mdf`` command in ``root`` against ``data_dir``; stop the demo if it fails."""
    finished(started(root, data_dir, *args, **settings))


def shown(path: Path) -> str:
    """``path`` relative to the working directory when below it: shorter to read and paste."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def training_config(training: dict[str, int]) -> dict[str, Any]:
    """The ``mdf train`` configuration of the demo's model."""
    return {
        # Small batches give the few images a demo can afford that many more steps, and no
        # component stops before the last epoch (it would stop on the chance plateau).
        "epochs": training["epochs"],
        "batch_size": training["batch_size"],
        "early_stopping": {"min_epochs": training["epochs"]},
        # The language model at a fifth of its default rate: at 1e-3 (and at 3 and 5 times
        # the default rates) the answer sat at the label prior for most of the 12 epochs,
        # 0.50 to 0.65 held-out accuracy on this split; at 2e-4 it learned from the image
        # (0.975 here, 0.90 on another patient split).
        "learning_rates": {"unet": 3e-4, "fusion": 1e-3, "film": 1e-3, "mllm": 2e-4},
        "image_only_eval": False,  # the history has no text to leave out
        # The U-Net's vessel stage costs about a second a step on this CPU, and running it
        # before the joint loop did not help the demo's classification at the same CPU time.
        "vessels": {"steps": 0},
    }


def cache_key(training: dict[str, int]) -> str:
    """Changes with the training parameters and configuration, the pinned dependencies and
    the model and training code this interpreter imports (found, not imported: that would
    load torch)."""
    parameters = json.dumps([training, training_config(training)], sort_keys=True)
    digest = hashlib.sha256(parameters.encode())
    digest.update((REPO / "pyproject.toml").read_bytes())
    for package in MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{package} is not installed; `make demo` installs it")
        top = Path(spec.origin).parent
        for path in sorted(top.rglob("*.py")):
            digest.update(f"{package}/{path.relative_to(top).as_posix()}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def train(root: Path, entry: Path, training: dict[str, int]) -> None:
    """Train and promote a tiny model in a scratch workspace; keep its checkpoint in ``entry``."""
    workspace = root / "training-workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()
    try:
        # The base model is built while the history is drawn and ingested: neither needs
        # the other.
        base = workspace / "base-model"
        init = started(root, workspace, "model", "init", "--preset", "tiny", str(base))
        with init:  # waited for, also when a command below fails
            mdf(root, workspace, "db", "upgrade")
            history = workspace / "history"
            images, size = str(training["images"]), str(training["size"])
            # No clinical text: with notes for some patients the model answers from the notes
            # and leaves the images at chance, and half the night's patients come without any.
            synth = ["synth", str(history), "--images", images, "--size", size]
            mdf(root, workspace, *synth, "--with-text", "0")
            ingest = ["ingest", str(history), "--batch", "labelled-history"]
            mdf(root, workspace, *ingest, MDF_PSEUDONYM_KEY=HISTORY_KEY)
            masks = workspace / "history-masks" / "masks.csv"
            mdf(root, workspace, "labels", "import", str(masks))
        finished(init)
        config = workspace / "train.json"
        config.write_text(json.dumps(training_config(training)))
        mdf(
            root,
            workspace,
            "train",
            "--config",
            str(config),
            MDF_MODEL_DIR=str(base),
            # Two threads unless told otherwise: a CPU's sums depend on the thread count, so
            # every machine trains the same model. On two idle cores training took 118 s
            # against about 180 on one; on busy cores two threads' spin-waits are far slower
            # (204 s for two epochs against 28), so there run with OMP_NUM_THREADS=1.
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        )
        sessions = session_factory(f"sqlite:///{workspace / 'mdf.sqlite3'}")
        with sessions() as session:
            version = session.scalar(select(ModelVersion).where(ModelVersion.is_promoted))
            if version is None:
                raise SystemExit("training promoted no model; see the report above")
            record = {
                "name": version.name,
                "manifest_sha256": version.manifest_sha256,
                "labels": version.labels,
                "preset": version.preset,
                "metrics": version.metrics,
                "referral": version.referral,  # the thresholds training chose
                "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "training": training,
            }
            checkpoint = Path(version.path)
        partial = entry.with_name(f"{entry.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint, partial / "checkpoint")
        (partial / "version.json").write_text(json.dumps(record, indent=2))
        for stale in entry.parent.iterdir():  # one entry is enough: drop older ones
            if stale != partial:
                shutil.rmtree(stale)
        partial.rename(entry)
    finally:
        stop_embedded_redis(workspace)  # its queue holds the history, which no one serves
        shutil.rmtree(workspace, ignore_errors=True)


def promote_cached(data_dir: Path, entry: Path) -> str:
    """Register the cached checkpoint in the demo's database and promote it."""
    record = json.loads((entry / "version.json").read_text())
    with session_factory(f"sqlite:///{data_dir / 'mdf.sqlite3'}").begin() as session:
        version = register_version(
            session,
            path=entry / "checkpoint",
            manifest_sha256=record["manifest_sha256"],
            labels=record["labels"],
            name=record["name"],
            preset=record["preset"],
            metrics=record["metrics"],
            referral=record.get("referral"),  # absent from entries cached before it was kept
        )
        promote(
            session,
            version,
            reason=f"demo: trained {record['trained_at']} on synthetic history",
            metrics=record["metrics"],
        )
    accuracy = record["metrics"]["accuracy"]
    return f"{record['name']} (held-out accuracy {accuracy:.2f}, trained {record['trained_at']})"


def night_accuracy(data_dir: Path, inbox: Path) -> tuple[int, int]:
    """How many of the night's labelled images the promoted model labelled as the night's
    manifest does, out of how many: an image it did not classify counts as wrong."""
    with (inbox / MANIFEST_NAME).open(newline="", encoding="utf-8") as f:
        truth = {inbox / row["file"]: row["label"] for row in csv.DictReader(f) if row["label"]}
    with session_factory(f"sqlite:///{data_dir / 'mdf.sqlite3'}")() as session:
        predicted = {
            from_stored(path): label
            for path, label in session.execute(
                select(ImagePath.path, Prediction.label)
                .join(Image, ImagePath.image_id == Image.id)
                .join(Prediction, Prediction.image_id == Image.id)
                .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
                .where(ModelVersion.is_promoted)
            )
        }
    return sum(predicted.get(path) == label for path, label in truth.items()), len(truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("var/demo"), help="emptied first")
    parser.add_argument("--cache", type=Path, default=Path("var/cache/demo-model"))
    parser.add_argument("--history-images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--night-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # our lines and the commands' stay in order

    root, data_dir = args.root.resolve(), args.root.resolve() / "data"
    stop_embedded_redis(data_dir)  # an earlier demo's, before its folder goes
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    training = {
        "images": args.history_images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "size": args.size,
    }
    entry = args.cache.resolve() / cache_key(training)
    if (entry / "version.json").is_file():
        how = f"reused the model cached in {shown(entry)} (delete it to train again)"
    else:
        print(
            f"Training a tiny model on {args.history_images} synthetic labelled images "
            "(minutes on a CPU; cached for the next run)"
        )
        began = time.monotonic()
        entry.parent.mkdir(parents=True, exist_ok=True)
        train(root, entry, training)
        how = f"trained in {time.monotonic() - began:.0f} s, cached in {shown(entry)}"

    mdf(root, data_dir, "db", "upgrade")
    served = promote_cached(data_dir, entry)
    print(f"\nModel: {how}\nPromoted: {served}")
    inbox = root / "inbox"
    night = ["synth", str(inbox), "--images", str(args.night_images), "--size", str(args.size)]
    mdf(root, data_dir, *night, "--seed", "2", "--with-text", "0.5", "--bad-files")
    try:
        mdf(root, data_dir, "run-batch", str(inbox), "--batch", NIGHT_BATCH)
    finally:
        stop_embedded_redis(data_dir)  # the results are in the database; no one needs the queue
    right, labelled = night_accuracy(data_dir, inbox)
    print(
        f"\nDemo night: {right} of {labelled} images labelled as its manifest says "
        f"(accuracy {right / labelled:.2f})"
    )
    data, command = shown(data_dir), shown(Path(sys.executable).parent / "mdf")
    print(
        f"""
Look at the night (the embedded SQLite database and Redis live in {data}):
  MDF_DATA_DIR={data} {command} status
  MDF_DATA_DIR={data} {command} results --batch {NIGHT_BATCH}
  MDF_DATA_DIR={data} {command} report {NIGHT_BATCH} --out {shown(root)}/report.html
  sqlite3 {data}/mdf.sqlite3 "SELECT status, label, count(*) FROM study_results GROUP BY 1, 2"

A real night: PostgreSQL, Redis and the real model (one local worker per GPU):
  export MDF_DATABASE_URL=postgresql+psycopg://mdf:PASSWORD@db-host/mdf
  export MDF_BROKER_URL=redis://redis-host:6379/0
  export MDF_PSEUDONYM_KEY=...   # keep it: a patient keeps one pseudonym across nights
  export MDF_DEVICE=auto         # each worker takes the first free GPU
  mdf db upgrade
  mdf run-batch /inbox/2026-11-28 --model /checkpoints/current --workers 4 --timeout 21600"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
