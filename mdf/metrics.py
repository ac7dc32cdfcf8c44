"""Prometheus metrics of the long-running processes (``mdf scheduler``, ``mdf worker``,
``mdf dicom listen``).

What describes the whole service is served by the scheduler alone and read at each
scrape from where it lives: images per status and reason code from the database
(``db.metrics``), messages waiting per queue from Redis (:class:`QueueDepth`). So a sum
over every scrape target counts nothing twice, and a restarted worker loses none of it.
What one worker does is that worker's own: its chunks' wall time and outcomes, the
model version it serves, the GPU memory it holds; and a listener's associations and
instances. ``MDF_METRICS_PORT`` turns serving on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import redis
import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mdf.broker import broker_url
from mdf.celery_app import DELIVER_QUEUE, INFERENCE_QUEUE, INTAKE_QUEUE, TRAINING_QUEUE
from mdf.settings import Settings

log = structlog.get_logger(__name__)

#: From the tiny model's tenth of a second to a 16-image chunk of the 11B model on a CPU.
CHUNK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

CHUNK_SECONDS = Histogram(
    "mdf_chunk_seconds",
    "Wall time of one inference chunk in this worker, from the model check to the last write.",
    buckets=CHUNK_BUCKETS,
)
CHUNK_IMAGES = Counter(
    "mdf_chunk_images",
    "Images of this worker's chunks by outcome (written, duplicates, failed, skipped, "
    "taken_over); its rate is this worker's images per second.",
    ["outcome"],
)
MODEL = Info("mdf_model", "The model version this worker serves.")
DICOM_ASSOCIATIONS = Counter(
    "mdf_dicom_associations",
    "Associations this listener accepted, or refused (a calling AE title not allowed, our AE "
    "title not called, nothing it could accept).",
    ["outcome"],
)
DICOM_INSTANCES = Counter(
    "mdf_dicom_instances",
    "Instances this listener was sent by outcome: stored in the spool and acknowledged, or "
    "refused (not written: out of resources).",
    ["outcome"],
)
DICOM_STUDIES = Counter(
    "mdf_dicom_studies",
    "Study folders this listener handed to intake (handed), or whose hand-over failed and "
    "waits for a retry (failed).",
    ["outcome"],
)


def observe_chunk(seconds: float, counts: Mapping[str, int]) -> None:
    """One chunk the worker finished: its wall time and its images by outcome."""
    CHUNK_SECONDS.observe(seconds)
    for outcome, images in counts.items():
        CHUNK_IMAGES.labels(outcome).inc(images)


def observe_model(version: str) -> None:
    """The model version the worker serves from now on."""
    MODEL.info({"version": version})


class QueueDepth(Collector):
    """Messages waiting in each Celery queue: the length of its Redis list.

    A chunk a worker has taken (prefetched or running) is no longer in the list: it waits
    in the broker's unacknowledged set until the worker acknowledges it.
    """

    QUEUES = (INTAKE_QUEUE, INFERENCE_QUEUE, TRAINING_QUEUE, DELIVER_QUEUE)

    def __init__(self, settings: Settings):
        # kombu's embedded-Redis URL (redis+socket://PATH) is redis-py's unix://PATH
        url = broker_url(settings).replace("redis+socket://", "unix://", 1)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mdf_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        try:
            for queue in self.QUEUES:
                family.add_metric([queue], self._client.llen(queue))
        except redis.RedisError as error:  # a scrape during a broker outage shows no depth
            log.warning("queue_depth_unavailable", error=type(error).__name__)
            return
        yield family


class GpuMemory(Collector):
    """GPU memory torch holds in this process: allocated by tensors, reserved by its cache."""

    def __init__(self, device: str):
        self._device = device

    def collect(self) -> Iterator[Metric]:
        import torch  # only a worker on a GPU builds this collector, after loading torch

        family = GaugeMetricFamily(
            "mdf_gpu_memory_bytes",
            "GPU memory torch holds in this worker, by kind (allocated, reserved).",
            labels=["device", "kind"],
        )
        family.add_metric([self._device, "allocated"], torch.cuda.memory_allocated(self._device))
        family.add_metric([self._device, "reserved"], torch.cuda.memory_reserved(self._device))
        yield family


def device_collectors(device: str) -> list[Collector]:
    """What a worker serving on ``device`` adds to the default metrics."""
    return [GpuMemory(device)] if device.startswith("cuda") else []


def serve(port: int | None, *collectors: Collector, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``registry`` with ``collectors`` at ``http://*:port/metrics``; no port, nothing.

    A port already taken is logged and skipped: metrics are never a reason to stop a
    scheduler or a worker in the middle of a night.
    """
    if port is None:
        return
    for collector in collectors:
        registry.register(collector)
    try:
        start_http_server(port, registry=registry)
    except OSError as error:
        log.error("metrics_not_served", port=port, error=error.strerror)
        return
    log.info("metrics_serving", port=port)
