"""The report as one self-contained HTML page: inline CSS, SVG and ``data:`` images only.

It loads nothing from anywhere and runs no script, so it can be mailed, archived and
opened offline. Every text from the database passes through ``html.escape``. Figures
carry a ``data-figure`` attribute so that tests (and scrapers) find each number.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from string import Template

from db.screening import Agreement, Validation
from db.stored_path import from_stored
from mdf.analysis.report import charts
from mdf.analysis.report.figures import REFERRED_PICTURES, BatchFigures, Patient, Pictured
from mdf.analysis.report.thumbnails import pictures, tints

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Screening report: $batch</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 72rem;
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
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(32rem, 1fr));
        gap: 1rem; }
figure { margin: 0; padding: .5rem; border: 1px solid #ddd; border-radius: 4px; }
figure .pictures { display: flex; gap: .3rem; align-items: flex-start; }
figure img, .missing { width: 160px; height: 120px; object-fit: contain; background: #111; }
figure img.overlay, .missing.overlay { width: 320px; height: 240px; }
.swatch { display: inline-block; width: .8em; height: .8em; margin: 0 .2em 0 .4em; }
code { font-size: 12px; }
td.refer { color: #a40000; font-weight: 600; }
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
<h2>Gradability</h2>
<p class="note">Of the images assessed, those a grader could grade; the others, by reason
(an image can have several).</p>
<div class="side">$gradability $ungradable</div>
<h2>Screening decisions</h2>
<p class="note">One decision per patient and study: refer when an eye is referable,
ungradable or missing, or an image without laterality is referable.</p>
$decisions
$validation
<h2>Patients</h2>
<p class="note">Pseudonyms only (the first 12 characters; the whole one on hovering);
referred patients first. An eye's probability is its images' highest referral
probability.</p>
$patients
<h2>Referred patients' images</h2>
<p class="note">Up to $referred_limit images of referred patients, each beside its
segmentation masks tinted over it, as opaque as the model is sure.</p>
<div class="grid">$referred</div>
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
the least certain first; the segmentation masks over each when they were written.</p>
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
        uncertain="\n".join(map(_card, figures.uncertain)),
        gradability=_table(
            ["images", ""],
            [
                ("assessed", _number(figures.gradability.assessed, "assessed")),
                ("gradable", _number(figures.gradability.gradable, "gradable")),
                ("gradable rate", _number(_share(figures.gradability.rate), "gradable_rate")),
            ],
        ),
        ungradable=_table(
            ["ungradable because", "images"],
            [
                (escape(reason), _number(n, f"ungradable:{reason}"))
                for reason, n in figures.gradability.reasons.items()
            ],
        ),
        decisions=_table(
            ["decision", "patients"],
            [
                (escape(decision), _number(n, f"decision:{decision}"))
                for decision, n in figures.decisions.items()
            ],
        ),
        validation=_validation(figures.validation, figures.referable_labels),
        patients=_patients(figures.patients),
        referred_limit=REFERRED_PICTURES,
        referred="\n".join(map(_card, figures.referred)) or '<p class="empty">none</p>',
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


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _validation(validation: Validation | None, referable_labels: list[str]) -> str:
    """The decisions against the manifest's labels; nothing on a night without them."""
    if validation is None:
        return ""
    agreements = {"eyes": validation.eyes, "patients": validation.patients}
    rates = _table(
        ["", "compared", "accuracy", "sensitivity", "specificity"],
        [
            (
                name,
                _number(a.n, f"validation:{name}:n"),
                _number(_share(a.accuracy), f"validation:{name}:accuracy"),
                _number(_share(a.sensitivity), f"validation:{name}:sensitivity"),
                _number(_share(a.specificity), f"validation:{name}:specificity"),
            )
            for name, a in agreements.items()
        ],
    )
    matrices = "".join(_confusion(name, a) for name, a in agreements.items())
    return (
        "<h2>Validation against the manifest's labels</h2>"
        f'<p class="note">Truth: an eye is referable when one of its images is labelled '
        f"{escape(', '.join(referable_labels))}, a patient when one of the study's images is; "
        "an ungradable eye counts as referred. Pending eyes and patients, and those without "
        f'a label, are left out.</p>{rates}<div class="side">{matrices}</div>'
    )


def _confusion(name: str, agreement: Agreement) -> str:
    (tn, fp), (fn, tp) = agreement.confusion
    cells = {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    figure = {key: _number(n, f"validation:{name}:{key}") for key, n in cells.items()}
    return _table(
        [f"{name}: truth \\ call", "referred", "not referred"],
        [
            ("referable", figure["tp"], figure["fn"]),
            ("not referable", figure["fp"], figure["tn"]),
        ],
    )


def _patients(patients: list[Patient]) -> str:
    if not patients:
        return '<p class="empty">none</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("patient", "study", "decision", "reason", "right eye", "left eye", "model")
    )
    rows = "".join(
        f'<tr data-study="{p.study}"><td><code title="{escape(p.pseudonym or "")}">'
        f"{escape((p.pseudonym or '-')[:12])}</code></td>{_number(p.study)}"
        f'<td class="{escape(p.decision)}" data-figure="decision-of:{p.study}">'
        f"{escape(p.decision)}</td><td>{escape(p.reason)}</td>"
        f"<td>{_eye(p.right_eye, p.right_probability)}</td>"
        f"<td>{_eye(p.left_eye, p.left_probability)}</td>"
        f"<td>{escape(p.model_version or '-')}</td></tr>"
        for p in patients
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _eye(state: str, probability: float | None) -> str:
    return escape(state) + ("" if probability is None else f" ({probability:.2f})")


def _picture(uri: str | None, alt: str, missing: str, kind: str = "") -> str:
    attribute = f' class="{kind}"' if kind else ""
    if uri is None:
        return f'<div class="missing {kind}">{escape(missing)}</div>'
    return f'<img{attribute} src="{uri}" alt="{escape(alt)}">'


def _card(item: Pictured) -> str:
    """The photograph, its masks over it, and what the model made of it."""
    masks = item.mask_path.split(";") if item.mask_path else []
    source, overlay = pictures(from_stored(item.source_path), item.frame, masks)
    shown = _picture(source, f"image {item.image_id}", "source file unavailable")
    legend = ""
    if masks:
        shown += _picture(
            overlay, f"image {item.image_id} with its masks", "mask unavailable", "overlay"
        )
        legend = "<br>masks:" + "".join(
            f'<span class="swatch" style="background:{t.colour}"></span>{escape(t.channel)}'
            for t in tints(masks)
        )
    version = escape(item.model_version or "no model")
    if item.reason_code:  # rejected or failed
        answer = f"<strong>{escape(item.status)}</strong> ({escape(item.reason_code)})"
    elif item.label is None:
        reason = escape(item.quality_reason or "no answer")
        answer = f"<strong>ungradable</strong> ({reason}; {version})"
    else:
        answer = (
            f"<strong>{escape(item.label)}</strong> {item.probability:.3f} ({version})"
            f"<br>{escape(item.generated_text or '')}"
            f"{'' if item.text_agrees else ' <em>(the text does not name this label)</em>'}"
        )
    return (
        f'<figure data-image="{item.image_id}"><div class="pictures">{shown}</div>'
        f"<figcaption>image {item.image_id}, eye {escape(item.laterality or '-')}: {answer}"
        f"{legend}</figcaption></figure>"
    )
