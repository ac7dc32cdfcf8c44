"""How far a batch has got, shown while ``mdf run-batch`` waits for it.

On a terminal one line updates in place; anywhere else (cron, CI, a log shipper) a
``batch_progress`` log line every few seconds carries the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import structlog

from db.lifecycle import PENDING, ImageStatus
from mdf.terminal import printable

log = structlog.get_logger(__name__)


def count(counts: dict[str, int], statuses: Iterable[ImageStatus]) -> int:
    """Images in any of ``statuses``, from a status -> count mapping."""
    return sum(counts[status.value] for status in statuses)


@dataclass(frozen=True)
class Progress:
    """A batch's status counts, and how many images finished since waiting began."""

    counts: dict[str, int]
    finished_since_start: int
    elapsed_s: float

    @property
    def pending(self) -> int:
        return count(self.counts, PENDING)

    @property
    def rate(self) -> float:
        """Images finished per second since waiting began."""
        return self.finished_since_start / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return self.pending / self.rate if self.rate > 0 else None

    def line(self, batch: str) -> str:
        if not self.pending:
            left = f"finished in {self.elapsed_s:.0f} s"
        elif self.eta_s is None:
            left = "estimating the time left"
        else:
            left = f"about {self.eta_s:.0f} s left"
        return (
            f"{batch}: {self.counts['done']}/{sum(self.counts.values())} classified, "
            f"{self.counts['rejected']} rejected, {self.counts['failed']} failed, "
            f"{self.rate:.1f} images/s, {left}"
        )


class ProgressDisplay:
    """One updating line on ``terminal``; without one, a log line every ``log_every_s``."""

    def __init__(self, batch: str, terminal: TextIO | None, *, log_every_s: float = 10.0):
        self.batch = batch
        self.terminal = terminal
        self.log_every_s = log_every_s
        self._logged_at: float | None = None
        self._line_open = False

    def show(self, progress: Progress, *, final: bool = False) -> None:
        """Show ``progress``; ``final`` ends the line (or always logs)."""
        if self.terminal is not None:
            end = "\n" if final else ""
            self.terminal.write(f"\r{printable(progress.line(self.batch))}\x1b[K{end}")
            self.terminal.flush()
            self._line_open = not final
            return
        now = time.monotonic()
        if final or self._logged_at is None or now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            log.info(
                "batch_progress",
                batch=self.batch,
                **progress.counts,
                images_per_s=round(progress.rate, 2),
                eta_s=None if progress.eta_s is None else round(progress.eta_s),
            )

    def close(self) -> None:
        """End a line left updating (by a Ctrl-C), so what follows starts on its own."""
        if self.terminal is not None and self._line_open:
            self.terminal.write("\n")
            self._line_open = False
