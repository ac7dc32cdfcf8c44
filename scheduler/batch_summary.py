"""What ``mdf run-batch`` says at the end: counts per label and model version, the
patients' screening decisions, every rejected or failed file with its reason, on a
validation night (a manifest with labels) how the referrals agree with the labels, and
where the results are.

Paths are shown relative to the delivered folder, on standard output only, for the
operator who has to find the file; they never go to the logs. File names and reasons
come from the delivery: every line loses its control characters, so a name cannot
erase or rewrite the lines about failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, make_url, select
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, ModelVersion, Prediction
from db.screening import Validation, decisions, validate
from db.stored_path import from_stored, shown
from mdf.settings import Settings
from mdf.terminal import printable
from scheduler.intake import IngestReport

#: Problem lines shown; a bad night lists the rest in the database, not on the screen.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """A rejected or failed image of the batch."""

    status: str
    path: str
    code: str | None
    reason: str | None


@dataclass(frozen=True)
class Summary:
    batch: str
    report: IngestReport
    counts: dict[str, int]  # images per status
    labels: list[tuple[str, str | None, int]]  # (model version, label, images); None: no answer
    problems: list[Problem]
    decisions: dict[str, int]  # studies per screening decision (refer, no_refer, pending)
    validation: Validation | None  # None without ground truth
    referable_labels: list[str]
    database: str  # the URL, password hidden
    masks_dir: Path
    seconds: float
    workers: str  # who classified

    def render(self) -> str:
        report, counts = self.report, self.counts
        lines = [
            f"batch {self.batch}: {report.files} files read, {report.images} new images, "
            f"{report.duplicates} already known, {report.unchanged} unchanged; "
            f"{counts['done']} classified, {counts['rejected']} rejected, "
            f"{counts['failed']} failed in {self.seconds:.0f} s by {self.workers}",
            "",
            f"  {'label':<24}{'images':>7}  model version",
        ]
        lines += [
            f"  {label or '(no answer)':<24}{n:>7}  {version}" for version, label, n in self.labels
        ]
        if not self.labels:
            lines.append("  (no predictions)")
        decided = ", ".join(f"{n} {decision}" for decision, n in self.decisions.items())
        lines += ["", f"patients (a study each, screening_outcomes): {decided}"]
        if self.validation is not None:
            lines += ["", *self._validation(self.validation)]
        if self.problems:
            lines += ["", f"  {'status':<9}{'file':<40}{'code':<22}reason"]
            for problem in self.problems[:MAX_PROBLEMS]:
                code = problem.code or "-"
                lines.append(f"  {problem.status:<9}{problem.path:<40}{code:<22}{problem.reason}")
            if len(self.problems) > MAX_PROBLEMS:
                lines.append(f"  ... and {len(self.problems) - MAX_PROBLEMS} more")
        lines += [
            "",
            "results:",
            f"  database  {self.database}",
            f"  masks     {self.masks_dir}",
            f"  look      mdf results --batch {self.batch}",
        ]
        return "\n".join(map(printable, lines))

    def _validation(self, validation: Validation) -> list[str]:
        """Referral against the manifest's labels; the confusion matrix as its four cells."""
        lines = [
            f"validation against the manifest's labels (referable: "
            f"{', '.join(self.referable_labels)}; ungradable counts as referred):",
            f"  {'':<10}{'n':>5}{'accuracy':>10}{'sensitivity':>13}{'specificity':>13}"
            f"{'TP':>6}{'FN':>6}{'FP':>6}{'TN':>6}",
        ]
        for name, agreement in (("eyes", validation.eyes), ("patients", validation.patients)):
            (tn, fp), (fn, tp) = agreement.confusion
            lines.append(
                f"  {name:<10}{agreement.n:>5}{_rate(agreement.accuracy):>10}"
                f"{_rate(agreement.sensitivity):>13}{_rate(agreement.specificity):>13}"
                f"{tp:>6}{fn:>6}{fp:>6}{tn:>6}"
            )
        return lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summarise(
    session: Session,
    settings: Settings,
    *,
    folder: Path,
    report: IngestReport,
    counts: dict[str, int],
    seconds: float,
    workers: str,
) -> Summary:
    labels = (
        select(ModelVersion.name, Prediction.label, func.count(Prediction.id))
        .join(Image, Prediction.image_id == Image.id)
        .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
        .where(Image.batch_id == report.batch_id)
        .group_by(ModelVersion.name, Prediction.label)
        .order_by(ModelVersion.name, Prediction.label)
    )
    problems = (
        select(Image.status, Image.source_path, Image.frame, Image.reason_code, Image.reason)
        .where(
            Image.batch_id == report.batch_id,
            Image.status.in_([ImageStatus.REJECTED, ImageStatus.FAILED]),
        )
        .order_by(Image.id)
    )
    root = folder.resolve()
    return Summary(
        batch=report.batch,
        report=report,
        counts=counts,
        labels=[(version, label, n) for version, label, n in session.execute(labels)],
        problems=[
            Problem(ImageStatus(status).value, _shown(path, root, frame), code, reason)
            for status, path, frame, code, reason in session.execute(problems)
        ],
        decisions=decisions(session, report.batch),
        validation=validate(session, report.batch, settings.referable_labels),
        referable_labels=list(settings.referable_labels),
        database=make_url(settings.resolved_database_url).render_as_string(hide_password=True),
        masks_dir=settings.masks_dir.resolve(),
        seconds=seconds,
        workers=workers,
    )


def _shown(path: str, root: Path, frame: int) -> str:
    """A file's path under the delivered folder, with its frame when not the first."""
    found = from_stored(path)
    if found.is_relative_to(root):
        found = found.relative_to(root)
    text = shown(found)
    return f"{text} [frame {frame}]" if frame else text
