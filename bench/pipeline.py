"""Inference throughput: the model alone against the whole pipeline, and 1 against 2 workers.

The same N synthetic fundus JPEGs are classified by the tiny model
(a) directly, in one process: ``load_frame`` + ``prepare`` + one ``classify_prepared``
    per chunk, nothing else; the floor the service can approach;
(b) end to end: ``Scheduler.ingest`` (probe, register, queue), Redis, ``mdf worker``
    subprocesses (started and ready before the clock starts) and the database, until
    every image is ``done``; with 1 worker and with 2.

Goal: (b) with one worker at most 10% slower than (a) at chunk size 16. Wall clock
swings on a shared machine, so setups are interleaved, the best of ``--repeat`` runs
counts, and the CPU time of the processes doing the work is reported beside it. Each
run gets a fresh database (SQLite file, or a new database on the PostgreSQL server
named by ``--database-url``); the broker is the embedded Redis unless ``--broker-url``
names one (a database no one else uses: the bench expects the queue to itself).

    python bench/pipeline.py [--images 256] [--chunk-size 16] [--size 256] [--repeat 1]
                             [--threads 1] [--database-url postgresql+psycopg://...]
                             [--broker-url URL]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from db.cli import upgrade
from db.models import Image, ImageStatus
from mdf.broker import stop_embedded_redis
from mdf.imaging import load_frame
from mdf.settings import Settings
from mdf.synthetic.delivery import write_dataset
from scheduler.service import Scheduler

ROOT = Path(__file__).resolve().parents[1]


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))


@dataclass(frozen=True)
class Run:
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of the processes doing the work: robust on a shared machine
    ingest_seconds: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct(paths: list[Path], args: argparse.Namespace) -> Run:
    """(a): the model alone, loaded before the clock starts."""
    import torch

    from mdf_model import load_classifier

    torch.set_num_threads(args.threads)
    chunk_size, max_new_tokens = args.chunk_size, args.max_new_tokens
    classifier = load_classifier(args.checkpoint, device="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(paths), chunk_size):
        batch = [
            classifier.prepare(load_frame(path), None) for path in paths[first : first + chunk_size]
        ]
        classifier.classify_prepared(batch, max_new_tokens=max_new_tokens)
    return Run(time.perf_counter() - start, time.process_time() - cpu)


@contextmanager
def fresh_database(server_url: str | None, directory: Path) -> Iterator[str]:
    """A migrated, empty database for one run: intake would skip images it has seen."""
    if server_url is None:
        url = f"sqlite:///{directory / f'{uuid.uuid4().hex}.sqlite3'}"
        upgrade(url)
        yield url
        return
    name = f"mdf_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def end_to_end(
    folder: Path, n: int, workers: int, database_url: str, args: argparse.Namespace, work: Path
) -> Run:
    """(b): from ingest to the last image done; CPU of the workers and of the ingest."""
    key = secrets.token_hex(32)
    env = {
        **os.environ,
        "MDF_DATA_DIR": str(work / "data"),
        "MDF_DATABASE_URL": database_url,
        "MDF_MODEL_DIR": str(args.checkpoint),
        "MDF_CHUNK_SIZE": str(args.chunk_size),
        "MDF_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "MDF_PSEUDONYM_KEY": key,
        "MDF_LOG_FORMAT": "json",
        "OMP_NUM_THREADS": str(args.threads),
    }
    if args.broker_url:
        env["MDF_BROKER_URL"] = args.broker_url
    settings = Settings(
        data_dir=work / "data",
        database_url=database_url,
        broker_url=args.broker_url,
        chunk_size=args.chunk_size,
        pseudonym_key=key,
    )
    logs = [work / f"worker-{workers}-{i}.log" for i in range(workers)]
    processes = []
    for i, log in enumerate(logs):
        with log.open("wb") as stream:
            command = [sys.executable, "-m", "mdf.cli", "worker", "--hostname", f"bench{i}@%h"]
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT
                )
            )
    engine = sa.create_engine(database_url)
    try:
        for log, process in zip(logs, processes, strict=True):
            while '"event": "worker_ready"' not in log.read_text(errors="replace"):
                if process.poll() is not None:
                    raise RuntimeError(f"worker failed to start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        scheduler = Scheduler(settings)
        cpu = [cpu_seconds(process.pid) for process in processes]
        start, ingest_cpu = time.perf_counter(), time.process_time()
        scheduler.ingest(folder, batch_name="bench")
        ingested, ingest_cpu = time.perf_counter() - start, time.process_time() - ingest_cpu
        done = sa.select(sa.func.count(Image.id)).where(Image.status == ImageStatus.DONE)
        while True:
            with engine.connect() as connection:
                if connection.scalar(done) == n:
                    break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        worker_cpu = sum(cpu_seconds(p.pid) - c for p, c in zip(processes, cpu, strict=True))
    finally:
        for process in processes:
            process.terminate()  # a warm shutdown
        for process in processes:
            process.wait(timeout=60)
        engine.dispose()
    return Run(elapsed, worker_cpu + ingest_cpu, ingested)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="runs per setup; the best counts")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (direct run and each worker); on a shared machine more "
        "than one lets idle threads spin and the timings swing",
    )
    parser.add_argument("--database-url", help="a PostgreSQL server (admin URL); default SQLite")
    parser.add_argument("--broker-url", help="default: the embedded Redis")
    args = parser.parse_args()

    from mdf_model import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as tmp:
        work = Path(tmp)
        folder = write_dataset(
            work / "inbox", args.images, size=args.size, dicom_fraction=0.0,
            with_text=False, write_masks=False,
        )  # fmt: skip
        paths = image_files(folder)
        assert len(paths) == args.images, len(paths)
        args.checkpoint = build_tiny_checkpoint(work / "checkpoint")
        runs: dict[str, list[Run]] = {"a": [], "b1": [], "b2": []}
        try:
            for _ in range(args.repeat):  # interleaved, so a busy spell hits every setup
                runs["a"].append(direct(paths, args))
                for workers in (1, 2):
                    with fresh_database(args.database_url, work) as url:
                        run = end_to_end(folder, args.images, workers, url, args, work)
                    runs[f"b{workers}"].append(run)
        finally:
            stop_embedded_redis(work / "data")
    report(runs, args)


def report(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    """The best run of each setup (least disturbed by other work on the machine)."""
    a, b1, b2 = (min(runs[key], key=lambda run: run.seconds) for key in ("a", "b1", "b2"))
    n = args.images
    database = "PostgreSQL" if args.database_url else "SQLite"
    broker = "Redis at " + args.broker_url if args.broker_url else "embedded Redis"
    print(
        f"{n} images ({args.size}x{args.size} JPEG), tiny model on the CPU, chunk size "
        f"{args.chunk_size}, {os.cpu_count()} cores, {args.threads} torch thread(s) per process, "
        f"{database}, {broker}, best of {args.repeat}"
    )
    header = f"{'run':<32}{'seconds':>9}{'images/s':>10}{'CPU s':>8}{'ingest s':>10}"
    print(f"{header}  every run (s)")
    labels = {
        "a": "(a) model only, one process",
        "b1": "(b) end to end, 1 worker",
        "b2": "(b) end to end, 2 workers",
    }
    for key, run in zip(labels, (a, b1, b2), strict=True):
        ingest = f"{run.ingest_seconds:.2f}" if key != "a" else ""
        every = " ".join(f"{r.seconds:.1f}" for r in runs[key])
        print(
            f"{labels[key]:<32}{run.seconds:>9.2f}{n / run.seconds:>10.2f}"
            f"{run.cpu_seconds:>8.1f}{ingest:>10}  {every}"
        )
    print(f"direct_images_per_s: {n / a.seconds:.2f}")
    print(f"e2e_1_worker_images_per_s: {n / b1.seconds:.2f}")
    print(f"e2e_2_workers_images_per_s: {n / b2.seconds:.2f}")
    print(f"overhead_pct: {(b1.seconds / a.seconds - 1) * 100:.1f}")
    print(f"cpu_overhead_pct: {(b1.cpu_seconds / a.cpu_seconds - 1) * 100:.1f}")
    print(f"scaling_2_workers: {b1.seconds / b2.seconds:.2f}")


if __name__ == "__main__":
    main()
