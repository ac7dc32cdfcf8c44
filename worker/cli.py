"""``mdf worker`` (one process per GPU), ``mdf ping`` (a container's health check) and
``mdf classify`` (files classified directly, decoded as the workers decode them)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import structlog

from mdf.errors import CommandError
from mdf.settings import Settings

log = structlog.get_logger(__name__)

#: The task module each queue's worker imports; ``intake`` is served by ``mdf scheduler``.
TASK_MODULES = {
    "inference": "worker.tasks",
    "training": "training.tasks",
    "deliver": "delivery.tasks",  # results sent back to the PACS (no GPU, no model)
}

EXIT_SOME_FAILED = 1


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

    classify = subparsers.add_parser(
        "classify", help="classify image files (JPEG, PNG, TIFF, DICOM) with a checkpoint"
    )
    classify.add_argument("checkpoint", type=Path, help="checkpoint directory")
    classify.add_argument(
        "files", nargs="+", type=Path, help="image files, as a site delivers them (first frame)"
    )
    classify.add_argument("--clinical", help="clinical text for every image")
    classify.add_argument("--device", default="cpu")
    classify.add_argument("--batch-size", type=int, default=8)
    classify.add_argument("--max-new-tokens", type=int, default=16)
    classify.add_argument("--no-text", action="store_true", help="label scores only, no text")
    classify.add_argument("--json", action="store_true", help="a JSON list, one entry per file")
    classify.set_defaults(handler=_classify)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from celery.signals import worker_ready

    from db.session import session_factory
    from mdf.celery_app import INFERENCE_QUEUE, create_app
    from mdf.metrics import device_collectors, serve

    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    queues = [queue.strip() for queue in args.queues.split(",") if queue.strip()]
    unknown = sorted(set(queues) - TASK_MODULES.keys())
    if not queues or unknown:
        raise CommandError(f"unknown queue(s) {unknown}; choose from {', '.join(TASK_MODULES)}")
    gpu_lock = None  # held open for the life of this process
    if settings.device == "auto":
        import torch

        from worker.gpu import NoFreeDevice, claim_device

        try:
            device, gpu_lock = claim_device(
                "auto", settings.data_dir / "gpus", torch.cuda.device_count()
            )
        except NoFreeDevice as error:
            raise CommandError(str(error)) from error
        settings = settings.model_copy(update={"device": device})
        log.info("device_claimed", device=device)
    for queue in queues:
        importlib.import_module(TASK_MODULES[queue])
    if INFERENCE_QUEUE in queues:
        # Load the model now, in the process that serves it (the solo pool never forks):
        # a worker without a usable model stops here with the reason, not at its first task.
        from worker.screening import quality_thresholds
        from worker.serving import ModelUnavailable, model_server

        try:
            quality_thresholds(settings.quality)
        except ValueError as error:
            raise CommandError(str(error)) from error
        server = model_server(
            settings.resolved_database_url,
            settings.model_dir,
            settings.device,
            settings.vision_tiles,
        )
        try:
            server.current()
        except ModelUnavailable as error:
            log.error("model_unavailable", error=str(error))
            raise CommandError(str(error)) from error

    app = create_app(settings)
    serve(settings.metrics_port, *device_collectors(settings.device))

    in_flight = chunks_in_flight(settings, queues)

    def on_ready(**_: object) -> None:
        log.info(
            "worker_ready",
            queues=queues,
            device=settings.device,
            chunks_in_flight=in_flight,
            burst=args.burst,
        )
        if args.burst:
            from worker.burst import stop_when_idle

            stop_when_idle(app, session_factory(settings.resolved_database_url), queues)

    worker_ready.connect(on_ready, weak=False)
    hostname = args.hostname or f"{'+'.join(queues)}-{os.getpid()}@%h"
    # Tasks run in this process, where the model lives: the solo pool, or with chunks in
    # flight together, as many threads. The prefetch is exactly the chunks in flight
    # (worker_prefetch_multiplier 1), so an idle worker beside a busy one gets the next chunk.
    pool = ["--pool", "solo"] if in_flight == 1 else ["--pool", "threads"]
    argv = ["worker", *pool, "--concurrency", str(in_flight), "--queues", ",".join(queues)]
    argv += ["--hostname", hostname]
    argv += ["--loglevel", settings.log_level, "--without-gossip", "--without-mingle"]
    try:
        return int(app.start(argv) or 0)
    finally:
        if gpu_lock is not None:
            gpu_lock.close()


def chunks_in_flight(settings: Settings, queues: list[str]) -> int:
    """Inference chunks a worker runs at once. Two where the model has its own chip: one
    chunk's images are prepared on the CPU while the other's are on the model, so the
    model does not wait for each chunk's first round of preparation. One on the CPU, where
    the two would share the cores, and beside training, which wants the GPU alone."""
    if "inference" not in queues or "training" in queues:
        return 1
    return settings.chunks_in_flight or (1 if settings.device == "cpu" else 2)


def _ping(args: argparse.Namespace, settings: Settings) -> int:
    from mdf.celery_app import create_app

    host = socket.gethostname()
    # Only this host's workers are asked (glob on the node name), not the whole fleet.
    replies = create_app(settings).control.ping(timeout=args.timeout, pattern=f"*@{host}")
    alive = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
    print(f"answered: {', '.join(alive)}" if alive else f"no worker on {host} answered")
    return 0 if alive else 1


def _classify(args: argparse.Namespace, settings: Settings) -> int:
    """Files decoded as the workers decode them, so a file is refused here with the reason
    code it would get in a night's batch, and a checkpoint unless it has the workers'
    ``MDF_VISION_TILES``."""
    from mdf.imaging import Rejection, decode_reduced
    from mdf_model import load_classifier
    from worker.inference import decode_side
    from worker.screening import quality_thresholds

    try:
        classifier = load_classifier(
            args.checkpoint, device=args.device, vision_tiles=settings.vision_tiles
        )
        side = decode_side(classifier, quality_thresholds(settings.quality))
    except ValueError as error:
        raise CommandError(str(error)) from error
    entries: dict[Path, dict[str, Any]] = {}
    prepared = []
    for path in args.files:
        try:
            decoded = decode_reduced(
                path.read_bytes(),
                long_side=side,
                max_pixels=settings.max_image_pixels,
                max_frames=settings.max_frames,
            )
            prepared.append((path, classifier.prepare(decoded.pixels, args.clinical)))
        except (Rejection, OSError, ValueError) as error:  # Rejection reads "code: reason"
            entries[path] = {"file": str(path), "error": str(error)}
    for start in range(0, len(prepared), args.batch_size):
        chunk = prepared[start : start + args.batch_size]
        results = classifier.classify_prepared(
            [item for _, item in chunk],
            generate_text=not args.no_text,
            max_new_tokens=args.max_new_tokens,
        )
        for (path, _), result in zip(chunk, results, strict=True):
            entries[path] = {
                "file": str(path),
                "label": result.label,
                "probabilities": result.probabilities,
                "text": result.text,
                "text_label": result.text_label,
                "agrees": result.agrees,
                "version_hash": classifier.version_hash,
            }
    ordered = [entries[path] for path in args.files]
    if args.json:
        print(json.dumps(ordered, indent=2))
    else:
        for entry in ordered:
            if "error" in entry:
                print(f"{entry['file']}: error: {entry['error']}")
            else:
                p = entry["probabilities"][entry["label"]]
                print(f"{entry['file']}: {entry['label']} ({p:.3f}) text={entry['text']!r}")
    return EXIT_SOME_FAILED if len(prepared) < len(args.files) else 0
