"""The report as one self-contained HTML page: inline CSS, SVG and ``data:`` images only.

It loads nothing from anywhere and runs no script, so it can be mailed, archived and
opened offline. Every text from the database passes through ``html.escape``. Figures
carry a ``data-figure`` attribute so that tests (and scrapers) find each number.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from string import Template

from db.stored_path import from_stored
from mdf.analysis.report import charts
from mdf.analysis.report.figures import BatchFigures, Uncertain
from mdf.analysis.report.thumbnails import mask_thumbnail, source_thumbnail

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Screening report: $batch</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 64rem;
       margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; }
h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .2rem .7rem; text-align: left; border-bottom: 1px solid #eee;
         vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.side { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
svg rect { fill: #4a7fb5; } svg line { stroke: #888; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr));
        gap: 1rem; }
figure { margin: 0; padding: .5rem; border: 1px solid #ddd; border-radius: 4px; }
figure .pictures { display: flex; gap: .3rem; }
figure img, .missing { width: 160px; height: 120px; object-fit: contain; background: #111; }
.missing { display: flex; align-items: center; justify-content: center; color: #ccc;
           font-size: 12px; text-align: center; }
figcaption { font-size: 12px; margin-top: .3rem; }
.empty, .note { color: #666; }
</style>
</head>
<body>
<h1>Screening report: batch $batch</h1>
<p class="note">Delivered $delivered UTC, $files_seen files seen; generated $generated UTC.
Patients appear only as pseudonyms and file names are left out: the image id finds an
image in the study_results view.</p>
<h2>Images</h2>
$statuses
<h2>Predicted labels</h2>
<div class="side">$labels $label_chart</div>
<h2>Probability of the predicted label</h2>
$histogram
<h2>Model versions</h2>
<p class="note">Every prediction made on this batch's images, older versions included.</p>
$versions
<h2>Rejected and failed images</h2>
$problems
<h2>Least certain images</h2>
<p class="note">The $uncertain_count predictions with the lowest probability of their label,
the least certain first; the segmentation mask beside each when one was written.</p>
<div class="grid">$uncertain</div>
</body>
</html>
""")


def render(figures: BatchFigures) -> str:
    return PAGE.substitute(
        batch=escape(figures.batch),
        delivered=f"{figures.created_at:%Y-%m-%d %H:%M}",
        files_seen=figures.files_seen,
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        statuses=_table(
            ["status", "images"],
            [
                *(
                    (escape(status), _number(count, f"status:{status}"))
                    for status, count in figures.statuses.items()
                ),
                ("<strong>total</strong>", _number(figures.images, "images")),
            ],
        ),
        labels=_table(
            ["label", "images"],
            [
                (escape(label), _number(count, f"label:{label}"))
                for label, count in figures.labels.items()
            ],
        ),
        label_chart=charts.bar_chart(figures.labels),
        histogram=charts.histogram(figures.probabilities),
        versions=_table(
            ["model version", "images", "mean probability", "text agrees", "mean inference ms"],
            [
                (
                    escape(v.name),
                    _number(v.images, f"version:{v.name}:images"),
                    _number(f"{v.mean_probability:.3f}"),
                    _number(f"{v.agreement:.1%}", f"version:{v.name}:agreement"),
                    _number("-" if v.mean_inference_ms is None else f"{v.mean_inference_ms:.1f}"),
                )
                for v in figures.versions
            ],
        ),
        problems=_table(
            ["image", "status", "reason code", "reason"],
            [
                (
                    _number(p.image_id, "problem"),
                    escape(p.status),
                    escape(p.reason_code or "-"),
                    escape(p.reason or ""),
                )
                for p in figures.problems
            ],
        ),
        uncertain_count=len(figures.uncertain),
        uncertain="\n".join(map(_uncertain, figures.uncertain)),
    )


def _number(value: object, figure: str | None = None) -> str:
    attribute = f' data-figure="{escape(figure)}"' if figure else ""
    return f'<td class="n"{attribute}>{escape(str(value))}</td>'


def _table(headings: list[str], rows: Iterable[tuple[str, ...]]) -> str:
    """Cells are HTML already: plain text escaped, numbers made by ``_number``."""
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
        for row in rows
    )
    if not body:
        return '<p class="empty">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _picture(uri: str | None, alt: str, missing: str) -> str:
    if uri is None:
        return f'<div class="missing">{escape(missing)}</div>'
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _uncertain(item: Uncertain) -> str:
    source = source_thumbnail(from_stored(item.source_path), item.frame)
    pictures = _picture(source, f"image {item.image_id}", "source file unavailable")
    if item.mask_path:
        pictures += _picture(mask_thumbnail(Path(item.mask_path)), "mask", "mask unavailable")
    return (
        f'<figure data-image="{item.image_id}"><div class="pictures">{pictures}</div>'
        f"<figcaption>image {item.image_id}, eye {escape(item.laterality or '-')}: "
        f"<strong>{escape(item.label)}</strong> {item.probability:.3f} "
        f"({escape(item.model_version)})<br>{escape(item.generated_text or '')}"
        f"{'' if item.text_agrees else ' <em>(the text does not name this label)</em>'}"
        f"</figcaption></figure>"
    )
