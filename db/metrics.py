"""The database's share of the Prometheus metrics: where the images are, and how fast
they finish. The scheduler serves it (``mdf.metrics`` says why only the scheduler); each
scrape runs two aggregate queries, so the numbers are the database's at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageStatus, utcnow

#: The statuses an image ends in (finished_at is set when it enters one).
FINISHED = (ImageStatus.DONE, ImageStatus.REJECTED, ImageStatus.FAILED)


class ImageMetrics(Collector):
    """``mdf_images{status, reason_code}`` and ``mdf_images_per_second``.

    Every status shows, with 0 when no image is in it, so a dashboard's series never
    vanish; ``reason_code`` is empty for images without one.
    """

    def __init__(self, sessions: sessionmaker[Session], *, window_s: float = 60.0):
        self._sessions = sessions
        self._window_s = window_s

    def collect(self) -> Iterator[Metric]:
        since = utcnow() - timedelta(seconds=self._window_s)
        with self._sessions() as session:
            rows = session.execute(
                select(Image.status, Image.reason_code, func.count()).group_by(
                    Image.status, Image.reason_code
                )
            ).all()
            # (status, status_changed_at) is indexed: this reads the recent rows only
            finished = session.scalar(
                select(func.count()).where(
                    Image.status.in_(FINISHED), Image.status_changed_at >= since
                )
            )
        counts = {(status.value, ""): 0 for status in ImageStatus}
        for status, reason_code, count in rows:
            counts[ImageStatus(status).value, reason_code or ""] = count
        images = GaugeMetricFamily(
            "mdf_images",
            "Images in the database by status and reason code (empty: none).",
            labels=["status", "reason_code"],
        )
        for (status, reason_code), count in sorted(counts.items()):
            images.add_metric([status, reason_code], count)
        yield images
        yield GaugeMetricFamily(
            "mdf_images_per_second",
            f"Images that finished (done, rejected or failed) in the last {self._window_s:g} "
            "seconds, per second.",
            value=(finished or 0) / self._window_s,
        )
