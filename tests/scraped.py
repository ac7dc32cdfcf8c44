"""Prometheus metrics as the tests read them: scraped over HTTP from a real process."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: (metric name, sorted labels) -> value, e.g. ("mdf_images", (("reason_code", ""), ...)).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int, timeout: float = 60) -> Samples:
    """Every sample at http://127.0.0.1:port/metrics, waiting for the server to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of metric ``name`` keyed by one of their labels."""
    return {
        dict(labels)[label]: value for (metric, labels), value in samples.items() if metric == name
    }
