"""Inline SVG charts drawn by hand: crisp at any zoom, no plotting library, no scripts.

Numbers are also in the report's tables; the charts only show their shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 480
BAR = 22  # height of one bar of the bar chart, gap included
LABEL_WIDTH = 130
PLOT_HEIGHT = 160
MARGIN = 24


def bar_chart(counts: Mapping[str, int]) -> str:
    """Horizontal bars, one per label, with its count at the bar's end."""
    if not counts:
        return '<p class="empty">no predictions yet</p>'
    largest = max(counts.values()) or 1
    room = WIDTH - LABEL_WIDTH - 50
    bars = []
    for row, (name, count) in enumerate(counts.items()):
        y = row * BAR
        length = room * count / largest
        bars.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{length:.1f}" height="{BAR - 6}"/>'
            f'<text x="{LABEL_WIDTH + length + 4:.1f}" y="{y + 15}">{count}</text>'
        )
    height = BAR * len(counts)
    return _svg(height, "Images per predicted label", "".join(bars))


def histogram(values: Sequence[float], bins: int = 20) -> str:
    """Counts of ``values`` in equal bins over [0, 1]; 1.0 falls in the last bin."""
    if not values:
        return '<p class="empty">no predictions yet</p>'
    counts = [0] * bins
    for value in values:
        counts[min(int(value * bins), bins - 1)] += 1
    largest = max(counts)
    step = (WIDTH - 2 * MARGIN) / bins
    parts = []
    for index, count in enumerate(counts):
        height = PLOT_HEIGHT * count / largest
        low, high = index / bins, (index + 1) / bins
        parts.append(
            f'<rect x="{MARGIN + index * step + 1:.1f}" y="{PLOT_HEIGHT - height:.1f}" '
            f'width="{step - 2:.1f}" height="{height:.1f}">'
            f"<title>{low:.2f} to {high:.2f}: {count} images</title></rect>"
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = MARGIN + tick * (WIDTH - 2 * MARGIN)
        parts.append(f'<text x="{x:.1f}" y="{PLOT_HEIGHT + 16}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="0" y="10">{largest}</text>')
    parts.append(
        f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{PLOT_HEIGHT}" y2="{PLOT_HEIGHT}"/>'
    )
    return _svg(PLOT_HEIGHT + 20, "Histogram of the predicted label's probability", "".join(parts))


def _svg(height: int, title: str, body: str) -> str:
    return (
        f'<svg width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )
