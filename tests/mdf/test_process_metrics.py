"""Metrics never stop a process: a taken port or a broker outage costs the numbers only."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, generate_latest
from scraped import free_port, scrape

from mdf.metrics import QueueDepth, observe_chunk, serve
from mdf.settings import Settings


def test_a_taken_port_is_logged_and_the_process_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        serve(taken.getsockname()[1], registry=CollectorRegistry())


def test_queue_depth_is_left_out_while_the_broker_is_down() -> None:
    registry = CollectorRegistry()
    registry.register(QueueDepth(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")))
    assert b"mdf_queue_depth" not in generate_latest(registry)


def test_chunks_are_counted_by_outcome_on_the_served_registry() -> None:
    port = free_port()
    serve(port)  # the default registry, as the worker serves it
    before = scrape(port)
    observe_chunk(2.0, {"written": 3, "failed": 1})
    after = scrape(port)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert grew("mdf_chunk_images_total", outcome="written") == 3
    assert grew("mdf_chunk_images_total", outcome="failed") == 1
    assert grew("mdf_chunk_seconds_count") == 1
    assert grew("mdf_chunk_seconds_bucket", le="2.5") == 1
    assert grew("mdf_chunk_seconds_bucket", le="1.0") == 0
