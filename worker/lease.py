"""Keeping a claim alive while a chunk runs: a heartbeat thread renews its lease.

The lease says "this worker is still on it"; once it lapses the scheduler re-sends
the images and another worker may take them over. It is renewed from a thread, every
third of its length, rather than between the steps of a chunk: a forward pass takes
seconds on a GPU but can take minutes on a CPU, and a lease long enough for the
slowest step would leave the images of a dead worker waiting that long. A worker
that dies (killed, out of memory, a crashing decoder) stops renewing with it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType

import structlog
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle

log = structlog.get_logger(__name__)


class Heartbeat:
    """``with Heartbeat(...):`` renews ``token``'s lease on ``image_ids`` until the block ends.

    It stops by itself once the claim holds none of them (finished, or taken over).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        image_ids: Sequence[int],
        token: str,
        lease_s: float,
    ):
        self.sessions = sessions
        self.image_ids = list(image_ids)
        self.token = token
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.sessions.begin() as session:
                    held = lifecycle.renew(session, self.image_ids, self.token, self.lease_s)
            except Exception as error:  # an outage: the next beat tries again
                log.warning("lease_renewal_failed", error=type(error).__name__)
                continue
            self.image_ids = held  # those finished (or taken over) drop out
            if not held:
                return
