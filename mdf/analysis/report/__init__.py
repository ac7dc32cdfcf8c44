"""``mdf report BATCH``: one self-contained HTML page about a night's batch.

``figures`` reads the numbers, ``charts`` draws them as SVG, ``thumbnails`` makes the
pictures (the masks over the photographs) and ``page`` puts it all into HTML. Like
``mdf results`` it shows patients only as pseudonyms and leaves file names and study
keys out.
"""

from __future__ import annotations

import re
from pathlib import Path

from db.session import session_factory
from mdf.analysis.report.figures import UnknownBatch, batch_figures
from mdf.analysis.report.page import render
from mdf.settings import Settings

__all__ = ["UnknownBatch", "build_report", "write_report"]


def build_report(settings: Settings, batch: str) -> str:
    with session_factory(settings.resolved_database_url)() as session:
        figures = batch_figures(session, batch, referable_labels=settings.referable_labels)
    return render(figures)


def write_report(settings: Settings, batch: str, out: Path | None = None) -> Path:
    """Write the report to ``out``, by default ``<data dir>/reports/<batch>.html``."""
    html = build_report(settings, batch)
    path = out or settings.data_dir / "reports" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', batch)}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
