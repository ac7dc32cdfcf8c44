"""``mdf worker`` (one process per GPU) and ``mdf ping`` (a container's health check)."""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys

import structlog

from mdf.settings import get_settings

log = structlog.get_logger(__name__)

#: The task module each queue's worker imports; ``intake`` is served by ``mdf scheduler``.
TASK_MODULES = {"inference": "worker.tasks", "training": "training.tasks"}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser(
        "worker", help="classify queued images (or train): one process per GPU"
    )
    worker.add_argument(
        "--queues",
        default="inference",
        help=f"comma-separated, of: {', '.join(TASK_MODULES)} (default: inference)",
    )
    worker.add_argument(
        "--device",
        help="overrides MDF_DEVICE: cuda:0, cuda:1, ..., cpu, or auto (the first GPU no other "
        "worker holds)",
    )
    worker.add_argument(
        "--burst",
        action="store_true",
        help="exit 0 once no image is waiting in the database and the queues are empty",
    )
    worker.add_argument("--hostname", help="Celery node name (default: <queues>-<pid>@<host>)")
    worker.set_defaults(handler=_worker)

    ping = subparsers.add_parser("ping", help="exit 0 when a worker on this host answers")
    ping.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    ping.set_defaults(handler=_ping)


def _worker(args: argparse.Namespace) -> int:
    from celery.signals import worker_ready

    from db.session import session_factory
    from mdf.celery_app import INFERENCE_QUEUE, create_app

    if args.device:
        os.environ["MDF_DEVICE"] = args.device
        get_settings.cache_clear()
    settings = get_settings()
    queues = [queue.strip() for queue in args.queues.split(",") if queue.strip()]
    unknown = sorted(set(queues) - TASK_MODULES.keys())
    if not queues or unknown:
        choices = ", ".join(TASK_MODULES)
        print(f"mdf worker: unknown queue(s) {unknown}; choose from {choices}", file=sys.stderr)
        return 2
    gpu_lock = None  # held open for the life of this process
    if settings.device == "auto":
        import torch

        from worker.gpu import NoFreeDevice, claim_device

        try:
            device, gpu_lock = claim_device(
                "auto", settings.data_dir / "gpus", torch.cuda.device_count()
            )
        except NoFreeDevice as error:
            print(f"mdf worker: {error}", file=sys.stderr)
            return 2
        os.environ["MDF_DEVICE"] = device
        get_settings.cache_clear()
        settings = get_settings()
        log.info("device_claimed", device=device)
    for queue in queues:
        try:
            importlib.import_module(TASK_MODULES[queue])
        except ModuleNotFoundError as error:
            if error.name != TASK_MODULES[queue]:
                raise
            print(f"mdf worker: no tasks for queue {queue}: {error}", file=sys.stderr)
            return 2
    if INFERENCE_QUEUE in queues:
        # Load the model now, in the process that serves it (the solo pool never forks):
        # a worker without a usable model stops here with the reason, not at its first task.
        from worker.serving import ModelUnavailable, model_server

        server = model_server(settings.resolved_database_url, settings.model_dir, settings.device)
        try:
            server.current()
        except ModelUnavailable as error:
            log.error("model_unavailable", error=str(error))
            print(f"mdf worker: {error}", file=sys.stderr)
            return 2

    app = create_app(settings)

    def on_ready(**_: object) -> None:
        log.info("worker_ready", queues=queues, device=settings.device, burst=args.burst)
        if args.burst:
            from worker.burst import stop_when_idle

            stop_when_idle(app, session_factory(settings.resolved_database_url), queues)

    worker_ready.connect(on_ready, weak=False)
    hostname = args.hostname or f"{'+'.join(queues)}-{os.getpid()}@%h"
    # Solo pool: tasks run in this process, where the model lives; concurrency 1 makes the
    # prefetch exactly one chunk, so an idle worker beside a busy one gets the next chunk.
    argv = ["worker", "--pool", "solo", "--concurrency", "1", "--queues", ",".join(queues)]
    argv += ["--hostname", hostname]
    argv += ["--loglevel", settings.log_level, "--without-gossip", "--without-mingle"]
    try:
        return int(app.start(argv) or 0)
    finally:
        if gpu_lock is not None:
            gpu_lock.close()


def _ping(args: argparse.Namespace) -> int:
    from mdf.celery_app import create_app

    host = socket.gethostname()
    # Only this host's workers are asked (glob on the node name), not the whole fleet.
    replies = create_app(get_settings()).control.ping(timeout=args.timeout, pattern=f"*@{host}")
    alive = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
    print(f"answered: {', '.join(alive)}" if alive else f"no worker on {host} answered")
    return 0 if alive else 1
