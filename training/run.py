"""One training run: fine-tune, evaluate against the champion, promote if better.

The challenger and the champion are scored on the same held-out patients. The
report adds what a shortcut would hide: the same set without clinical text, and,
when configured, a second model trained without one source and scored on it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from db.model_versions import promote, promoted_version, register_version
from db.models import TrainingRun, utcnow
from db.session import session_factory
from mdf.settings import Settings
from training import distributed, plots
from training.config import TrainConfig
from training.dataset import PreparedSet, labelled_examples, prepare
from training.metrics import Evaluation, evaluate
from training.promotion import decide
from training.referral import choose_thresholds, measure_thresholds
from training.splits import Example, Split, split_by_patient, split_by_source
from training.trainer import History, Trainer, apply_strategy

log = structlog.get_logger(__name__)

#: The resumable training state a run keeps beside its report (training/state.py).
STATE_FILE = "state.safetensors"
#: What earlier versions pickled instead: never read, named in the error only.
PICKLED_STATE_FILE = "state.pt"


@dataclass
class RunResult:
    run_id: int
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, Any]
    report: Path
    seconds: float


@dataclass
class Scored:
    evaluation: Evaluation
    truth: list[str]
    scores: list[float]  # probability of the last label, for the ROC
    probabilities: list[dict[str, float]]  # every label's, for the referral thresholds


def classified(classifier, prepared: PreparedSet, *, generate_text: bool, batch_size: int = 16):
    """The classifier's results for every prepared input, without the segmentation masks
    (no score uses them); the answer text only where ``generate_text``."""
    results = []
    for start in range(0, len(prepared.inputs), batch_size):
        results += classifier.classify_prepared(
            prepared.inputs[start : start + batch_size],
            generate_text=generate_text,
            segment=False,
            max_new_tokens=8,
        )
    return results


def score(classifier, prepared: PreparedSet, batch_size: int = 16) -> Scored:
    results = classified(classifier, prepared, generate_text=True, batch_size=batch_size)
    truth = [e.label for e in prepared.examples]
    evaluation = evaluate(
        classifier.labels,
        truth,
        [r.probabilities for r in results],
        [r.text_label for r in results],
    )
    return Scored(
        evaluation,
        truth,
        [r.probabilities[classifier.labels[-1]] for r in results],
        [dict(r.probabilities) for r in results],
    )


def load_for_training(path: Path, config: TrainConfig):
    """The starting classifier, set up for the configured variant and strategy."""
    from mdf_model import ABLATIONS, MDFModel, load_classifier

    classifier = load_classifier(path, device=config.device or "cpu")
    if config.variant == "baseline":
        model = classifier.model
        classifier.model = MDFModel(
            model.config.replace(baseline=True, frozen=()), model.base, model.processor
        ).to(model.device)
    else:
        classifier.model.set_frozen(ABLATIONS[config.variant])
    if config.seg_loss_weight is not None:  # the model's forward pass weighs the two losses
        model = classifier.model
        model.config = model.config.replace(seg_loss_weight=config.seg_loss_weight)
    apply_strategy(classifier.model, config.strategy)
    return classifier


def validation_split(examples: list[Example], config: TrainConfig) -> Split:
    """The patients training stops on (``train_on``) and referral thresholds are set on."""
    return split_by_patient(
        examples, eval_fraction=config.validation_fraction, seed=config.seed + 1
    )


def train_on(
    start: Path, examples: list[Example], config: TrainConfig, state: Path | None = None
) -> tuple[Any, History]:
    """Fine-tune a copy of ``start`` on ``examples`` (a patient-grouped part validates);
    ``state`` is where training resumes from and saves to after every epoch."""
    distributed.lead(start, examples, config, state)  # the other ranks join (FSDP)
    classifier = load_for_training(start, config)
    split = validation_split(examples, config)
    train, validation = prepare(classifier, split.train), prepare(classifier, split.evaluation)
    if not train.inputs or not validation.inputs:
        raise ValueError(
            f"nothing to train on: {len(train.inputs)} training and {len(validation.inputs)} "
            f"validation images could be prepared ({train.skipped + validation.skipped} skipped)"
        )
    log.info("training_started", train=len(train.inputs), validation=len(validation.inputs))
    history = Trainer(classifier, config).fit(
        train.inputs,
        [e.label for e in train.examples],
        validation.inputs,
        [e.label for e in validation.examples],
        state=state,
    )
    return classifier, history


@dataclass(frozen=True)
class Champion:
    version_id: int
    name: str
    path: Path
    manifest_sha256: str


class Runner:
    """Carries one run from its ``training_runs`` row to a registered (maybe promoted) version."""

    def __init__(self, config: TrainConfig, settings: Settings):
        from mdf_model import load_classifier  # torch loads with the trainer only

        if config.device is None:
            config = config.model_copy(update={"device": settings.device})
        self.config = config
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings.resolved_database_url)
        self.load = load_classifier

    def run(self) -> RunResult:
        began = time.perf_counter()
        champion = self._champion()
        start = self.config.checkpoint or (champion.path if champion else self.settings.model_dir)
        if start is None:
            raise ValueError(
                "nothing to fine-tune: set `checkpoint` in the config or MDF_MODEL_DIR, "
                "or promote a model version"
            )
        with self.sessions.begin() as session:
            row = TrainingRun(
                config=self.config.model_dump(mode="json"),
                champion_version_id=champion.version_id if champion else None,
            )
            session.add(row)
            session.flush()
            run_id = row.id
        structlog.contextvars.bind_contextvars(training_run_id=run_id)
        try:
            result = self._train_evaluate_record(run_id, Path(start), champion)
        except Exception as error:
            with self.sessions.begin() as session:
                failed = session.get_one(TrainingRun, run_id)
                failed.status, failed.error, failed.finished_at = "failed", str(error), utcnow()
            raise
        finally:
            structlog.contextvars.unbind_contextvars("training_run_id")
        result.seconds = time.perf_counter() - began
        return result

    def _champion(self) -> Champion | None:
        with self.sessions() as session:
            version = promoted_version(session)
            if version is None:
                return None
            return Champion(version.id, version.name, Path(version.path), version.manifest_sha256)

    def _train_evaluate_record(
        self, run_id: int, start: Path, champion: Champion | None
    ) -> RunResult:
        config = self.config
        from mdf_model.pretrained import read_config

        labels = read_config(start).labels  # the model itself loads once, in train_on
        examples = labelled_examples(self.sessions, labels, limit=config.max_images)
        if len({e.group for e in examples}) < 4:
            raise ValueError(f"too few labelled patients to train on: {len(examples)} images")
        split = split_by_patient(examples, eval_fraction=config.eval_fraction, seed=config.seed)
        out = (config.output_dir or self.settings.data_dir / "training") / f"run-{run_id:04d}"
        out.mkdir(parents=True, exist_ok=True)
        state = out / STATE_FILE
        if config.resume_run is not None:
            previous = out.with_name(f"run-{config.resume_run:04d}") / STATE_FILE
            if not previous.is_file():
                pickled = previous.with_name(PICKLED_STATE_FILE).is_file()
                raise ValueError(
                    f"cannot resume run {config.resume_run}: {previous} is missing"
                    + (" (its pickled state.pt is never read: start afresh)" if pickled else "")
                )
            shutil.copyfile(previous, state)
        classifier, history = train_on(start, split.train, config, state)

        held_out = prepare(classifier, split.evaluation)
        challenger = score(classifier, held_out)
        metrics: dict[str, Any] = {"random_patient": challenger.evaluation.to_dict()}
        referral = self._referral(classifier, validation_split(split.train, config), labels)
        metrics["referral"] = {
            "target_sensitivity": referral["target_sensitivity"],
            "validation": referral["labels"],
            "random_patient": measure_thresholds(
                referral, challenger.truth, challenger.probabilities
            ),
        }
        if config.image_only_eval:
            image_only = prepare(classifier, split.evaluation, with_text=False)
            metrics["image_only"] = score(classifier, image_only).evaluation.to_dict()
        if config.held_out_source:
            by_source = split_by_source(examples, config.held_out_source)
            other, _ = train_on(start, by_source.train, config)
            scored = score(other, prepare(other, by_source.evaluation))
            metrics[by_source.name] = scored.evaluation.to_dict()
        champion_eval = None
        if champion is not None:
            loaded = self.load(  # only as registered: a replaced champion fails the run
                champion.path,
                device=config.device,
                expected_manifest_sha256=champion.manifest_sha256,
            )
            champion_eval = score(loaded, held_out)
            metrics["champion_random_patient"] = champion_eval.evaluation.to_dict()
        rule = config.promotion
        decision = decide(
            challenger.evaluation,
            champion_eval.evaluation if champion_eval else None,
            metric=rule.metric,
            margin=rule.margin,
            max_recall_drop=rule.max_recall_drop,
        )

        checkpoint = out / "checkpoint"
        version_hash = classifier.save(checkpoint)
        report_path = plots.write_report(
            out,
            {
                "run_id": run_id,
                "started_from": str(start),
                "config": config.model_dump(mode="json"),
                "data": {
                    "labelled_images": len(examples),
                    "train": len(split.train),
                    "evaluation": len(split.evaluation),
                    "evaluation_patients": len({e.group for e in split.evaluation}),
                },
                "history": history.__dict__,
                "metrics": metrics,
                "decision": {"promote": decision.promote, "reason": decision.reason},
                "checkpoint": str(checkpoint),
            },
        )
        plots.plot_losses(history.__dict__, out / "losses.png")
        plots.plot_confusion(challenger.evaluation, out / "confusion.png")
        if len(labels) == 2:
            plots.plot_roc(
                challenger.evaluation, challenger.truth, challenger.scores, out / "roc.png"
            )
        promoted = decision.promote and rule.auto_promote
        with self.sessions.begin() as session:
            version = register_version(
                session,
                path=checkpoint,
                manifest_sha256=version_hash,
                labels=labels,
                name=f"run{run_id:04d}-{version_hash[:8]}",
                preset=classifier.model.config.preset,
                metrics=metrics["random_patient"],
                referral=referral,
            )
            row = session.get_one(TrainingRun, run_id)
            row.status, row.finished_at = "finished", utcnow()
            row.challenger_version_id = version.id
            row.metrics, row.report_path, row.reason = metrics, str(report_path), decision.reason
            row.promoted = promoted
            if promoted:
                promote(
                    session,
                    version,
                    reason=decision.reason,
                    metrics=metrics["random_patient"],
                    training_run_id=run_id,
                )
            name = version.name
        log.info("training_run_finished", version=name, promoted=promoted, reason=decision.reason)
        return RunResult(run_id, name, promoted, decision.reason, metrics, report_path, 0.0)

    def _referral(self, classifier: Any, validation: Split, labels: list[str]) -> dict[str, Any]:
        """Each referable label's threshold, set on the validation patients' images: from the
        label probabilities alone, so no answer text is generated."""
        prepared = prepare(classifier, validation.evaluation)
        results = classified(classifier, prepared, generate_text=False)
        return choose_thresholds(
            [e.label for e in prepared.examples],
            [dict(r.probabilities) for r in results],
            [label for label in self.settings.referable_labels if label in labels],
            self.settings.referral_target_sensitivity,
        )


def train_and_evaluate(config: TrainConfig, settings: Settings) -> RunResult:
    return Runner(config, settings).run()
