"""One chunk, start to finish: claim, load, preprocess, classify, write.

Plain functions, so the pipeline is tested without Celery; ``worker.tasks`` is the
shell. The claim's lease is renewed while the chunk runs (``worker.lease``), and only
this claim's token can write its results. Failures are kept as small as their cause:

- an image whose file changed since intake, or that cannot be read or prepared, fails
  alone, with its reason, and the rest of the chunk goes on;
- a chunk started before (its worker died, or it is retried) runs image by image,
  each counted as attempted and written before the next starts: a crash is charged
  to the image in flight, not to its chunk-mates;
- a pool of threads prepares the chunk's images; a model on a GPU runs on them in
  order, in batches of those prepared by the time it is free, while the pool prepares
  the next ones (a model on the CPU, in one batch once all are prepared); a batched
  forward pass that raises is retried image by image, so an input that breaks the model
  fails alone too;
- a worker may run several chunks at once (``MDF_CHUNKS_IN_FLIGHT``, two on a GPU): each
  pass waits for its chunk's turn on the model (``ServedModel.turn``), so one chunk is
  prepared while another is on the model; a chunk started before runs alone;
- a transient error (the database or broker unreachable) propagates unchanged:
  the task retries the whole chunk later and the claim makes that safe;
- anything else fails the chunk's claimed images with the error as their reason
  and is re-raised, so it is both recorded and logged.

Per fresh chunk the database sees four round trips: the claim, the promoted-version
check, the start (an attempt counted for each image), and one transaction writing every
prediction and failure (plus a lease renewal every third of the lease).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kombu.exceptions
import numpy as np
import sqlalchemy.exc
import structlog
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import ClaimedImage, Failure, ReasonCode
from db.stored_path import from_stored
from mdf.imaging import Rejection, decode_reduced
from mdf.imaging.quality import Quality, QualityThresholds, assess
from mdf.settings import Settings
from worker.content import read_registered
from worker.lease import Heartbeat
from worker.masks import ImageMask, mask_directory, save_masks
from worker.predictions import PredictionRow, write_predictions
from worker.screening import Referral, quality_columns, quality_thresholds
from worker.serving import Classification, Classifier, ModelServer, ServedModel

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Errors that say nothing about the images: retry the chunk once the service is back.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,  # connection refused or lost, deadlock, SQLite busy
    sqlalchemy.exc.InterfaceError,  # connection already closed
    sqlalchemy.exc.DisconnectionError,
    kombu.exceptions.OperationalError,  # broker unreachable
)


@dataclass(frozen=True)
class Prepared:
    image: ClaimedImage
    # mdf_model.PreparedInput, only handed back to the classifier; None when the model
    # refused a picture already assessed ungradable: an outcome, written without an answer
    input: Any
    preprocess_ms: float
    size: tuple[int, int]  # the image's own (width, height): its masks are saved at it
    quality: Quality


@dataclass(frozen=True)
class Classified:
    prepared: Prepared
    result: Classification
    inference_ms: float


@dataclass
class ChunkOutcome:
    model_version: str
    written: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    failed: dict[int, Failure] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    taken_over: list[int] = field(default_factory=list)  # claim lapsed: another wrote them
    timings_ms: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "written": len(self.written),
            "duplicates": len(self.duplicates),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "taken_over": len(self.taken_over),
        }

    def add_timings(self, **timings_ms: float) -> None:
        for name, ms in timings_ms.items():
            self.timings_ms[name] = round(self.timings_ms.get(name, 0.0) + ms, 1)


def decode_side(classifier: Classifier, quality: QualityThresholds) -> int:
    """The long side a photograph is decoded at, at least; a larger JPEG is decoded reduced.

    The model needs what it resamples to. Gradability area-averages the photograph to its
    working size, and that average stays close to the full decode's when it spans at least
    two decoded pixels a side: on the STARE photographs and their degradations at 3504 x 2336
    (bench/decode_reduced.py), gradability then changes for 1 of 280, against 3 with one
    pixel a side and 6 between a full decode and the photographs' delivered size.
    """
    return max(classifier.input_side, 2 * quality.working_size)


def preprocess(
    images: Sequence[ClaimedImage],
    classifier: Classifier,
    *,
    max_pixels: int,
    max_frames: int,
    max_bytes: int,
    quality: QualityThresholds,
    overlap: bool,
    threads: int,
) -> Iterator[tuple[list[Prepared], dict[int, Failure]]]:
    """Read, verify, decode, assess and prepare each image; one that fails is set aside
    with its reason. The bytes decoded are the bytes hashed: nothing else is read in
    between.

    Every image is submitted at once to a pool of ``threads`` threads: decoding,
    resampling and the gradability measures run in Pillow, numpy and scipy, which release
    the GIL. With ``overlap`` the images are handed out in order in batches as they are
    ready (see ``ready_in_order``), for the caller to run the model on each while the pool
    goes on with the next; without, in one batch once all are ready.
    """
    side = decode_side(classifier, quality)

    def one(image: ClaimedImage) -> Prepared | Failure:
        start = time.perf_counter()
        try:
            data = read_registered(
                from_stored(image.source_path), image.sha256, max_bytes=max_bytes
            )
            decoded = decode_reduced(
                data, image.frame, long_side=side, max_pixels=max_pixels, max_frames=max_frames
            )
            assessed = assess(decoded.pixels, quality)
            model_input = _model_input(classifier, decoded.pixels, image.clinical_text, assessed)
        except Rejection as rejection:
            return Failure(rejection.code, rejection.reason)
        except OSError as error:
            return Failure(ReasonCode.UNREADABLE, f"cannot read the file: {error.strerror}")
        except ValueError as error:
            return Failure(ReasonCode.UNUSABLE_IMAGE, str(error))
        except Exception as error:
            return Failure(ReasonCode.PREPROCESS_ERROR, f"{type(error).__name__}: {error}")
        elapsed = (time.perf_counter() - start) * 1000
        return Prepared(image, model_input, elapsed, decoded.size, assessed)

    threads = max(min(len(images), threads), 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(one, image) for image in images]
        try:
            done = 0
            at_least = threads if overlap else len(futures)
            for batch in ready_in_order(futures, at_least=at_least):
                yield _split(images[done : done + len(batch)], batch)
                done += len(batch)
        finally:  # should the caller stop early (an error), start no further image
            for future in futures:
                future.cancel()


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, a container's cpuset), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _split(
    images: Sequence[ClaimedImage], outcomes: Sequence[Prepared | Failure]
) -> tuple[list[Prepared], dict[int, Failure]]:
    prepared = [outcome for outcome in outcomes if isinstance(outcome, Prepared)]
    failures = {
        image.id: outcome
        for image, outcome in zip(images, outcomes, strict=True)
        if isinstance(outcome, Failure)
    }
    return prepared, failures


def ready_in_order(futures: Sequence[Future[T]], *, at_least: int) -> Iterator[list[T]]:
    """The results in order, in batches: each waits for the next ``at_least`` (a round of
    the pool's threads, which finish about together) and takes every later one already
    finished, up to the first that is not. Asked for its next batch when the model is free
    again, it hands out what the pool finished meanwhile: a slow model gets large batches
    (a pass per image costs the most), a fast one small batches early."""
    start = 0
    while start < len(futures):
        end = min(start + at_least, len(futures))
        batch = [future.result() for future in futures[start:end]]
        while end < len(futures) and futures[end].done():
            batch.append(futures[end].result())
            end += 1
        yield batch
        start = end


def _model_input(
    classifier: Classifier, pixels: np.ndarray, clinical_text: str | None, quality: Quality
) -> Any:
    """The model's input; None when the model refuses a picture already found ungradable
    (a black frame): the image then ends done and ungradable, not failed."""
    try:
        return classifier.prepare(pixels, clinical_text)
    except ValueError:
        if quality.gradable:
            raise
        return None


def classify(
    classifier: Classifier, prepared: Sequence[Prepared], *, max_new_tokens: int
) -> tuple[list[Classified], dict[int, Failure]]:
    """One batched forward pass; if it raises, each image alone to find the culprit."""
    if not prepared:
        return [], {}
    start = time.perf_counter()
    try:
        results = classifier.classify_prepared(
            [item.input for item in prepared], max_new_tokens=max_new_tokens
        )
    except Exception as error:
        log.warning("batch_forward_failed", images=len(prepared), error=repr(error))
    else:
        share = (time.perf_counter() - start) * 1000 / len(prepared)
        return [Classified(p, r, share) for p, r in zip(prepared, results, strict=True)], {}
    classified: list[Classified] = []
    failures: dict[int, Failure] = {}
    for item in prepared:
        start = time.perf_counter()
        try:
            (result,) = classifier.classify_prepared([item.input], max_new_tokens=max_new_tokens)
        except Exception as error:
            failures[item.image.id] = Failure(
                ReasonCode.INFERENCE_ERROR, f"{type(error).__name__}: {error}"
            )
        else:
            classified.append(Classified(item, result, (time.perf_counter() - start) * 1000))
    return classified, failures


def prediction_row(item: Classified, mask_path: str | None, referral: Referral) -> PredictionRow:
    """The model's answer, the image's quality and, for a gradable image, the referral."""
    result, quality = item.result, item.prepared.quality
    referable, referral_probability = (
        referral.apply(result.probabilities) if quality.gradable else (None, None)
    )
    return PredictionRow(
        image_id=item.prepared.image.id,
        label=result.label,
        probability=float(result.probabilities[result.label]),
        probabilities={label: float(p) for label, p in result.probabilities.items()},
        generated_text=result.text,
        text_label=result.text_label,
        text_agrees=bool(result.agrees),
        mask_path=mask_path,
        preprocess_ms=round(item.prepared.preprocess_ms, 3),
        inference_ms=round(item.inference_ms, 3),
        **quality_columns(quality),
        referable=referable,
        referral_probability=referral_probability,
    )


def unanswered_row(item: Prepared) -> PredictionRow:
    """An ungradable picture the model refused: its quality and timing, no answer."""
    return PredictionRow(
        image_id=item.image.id,
        label=None,
        probability=None,
        probabilities=None,
        generated_text=None,
        text_label=None,
        text_agrees=None,
        mask_path=None,
        preprocess_ms=round(item.preprocess_ms, 3),
        inference_ms=None,
        **quality_columns(item.quality),
        referable=None,
        referral_probability=None,
    )


@dataclass(frozen=True)
class Pipeline:
    """Everything a chunk needs; built per task from the settings, cheap to build."""

    sessions: sessionmaker[Session]
    server: ModelServer
    masks_dir: Path
    max_attempts: int
    max_pixels: int
    max_frames: int
    max_file_bytes: int
    max_new_tokens: int
    lease_s: int
    worker: str
    quality: QualityThresholds
    referral_defaults: Mapping[str, float]  # each referable label's configured threshold
    # The model runs on the images prepared first while the pool prepares the rest: only
    # where the model is off the CPU. On the CPU the model and the pool share the cores, and
    # a chunk split into passes costs the model more than the overlap saves (measured: the
    # tiny model's chunks of 16 photographs on two shared cores took 2 to 40% longer).
    overlap: bool = False
    threads: int = field(default_factory=usable_cpus)  # the pool preparing a chunk's images

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        sessions: sessionmaker[Session],
        server: ModelServer,
        worker: str,
    ) -> Pipeline:
        return cls(
            sessions=sessions,
            server=server,
            masks_dir=settings.masks_dir,
            max_attempts=settings.max_attempts,
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_frames,
            max_file_bytes=settings.max_file_bytes,
            max_new_tokens=settings.max_new_tokens,
            lease_s=settings.claim_lease_s,
            worker=worker,
            quality=quality_thresholds(settings.quality),
            overlap=settings.device != "cpu",
            threads=settings.preprocess_threads or usable_cpus(),
            referral_defaults={
                label: settings.referral_threshold(label) for label in settings.referable_labels
            },
        )

    def run(self, image_ids: Sequence[int], token: str | None = None) -> ChunkOutcome:
        """Claim and process a chunk; ``token`` names the claim (the task's id, so that its
        retry takes its own images back).

        The claim counts no attempt: a chunk may wait for its turn on the model (another
        chunk in flight runs alone, or a new version is loaded), its lease renewed, and a
        worker that dies meanwhile charges it nothing. A chunk started before runs alone:
        should it kill its worker again, only its image in flight is charged, not those of
        another chunk beside it."""
        started = time.perf_counter()
        with self.sessions.begin() as session:
            claim = lifecycle.claim(
                session,
                image_ids,
                max_attempts=self.max_attempts,
                lease_s=self.lease_s,
                token=token,
            )
        for image_id in claim.exhausted:
            log.warning("image_failed", image_id=image_id, reason_code=ReasonCode.TOO_MANY_ATTEMPTS)
        # A chunk none of whose images was started before shares one forward pass: all are
        # in flight together, so all are counted at once.
        fresh = not any(image.attempts for image in claim.images)
        ids = [image.id for image in claim.images]
        with (
            Heartbeat(self.sessions, ids, claim.token, self.lease_s),
            self.server.serving(alone=not fresh) as served,  # the hot-reload point
            structlog.contextvars.bound_contextvars(model_version=served.name),
        ):
            outcome = ChunkOutcome(served.name, skipped=claim.skipped)
            if claim.images:
                try:
                    if fresh:
                        self._start_and_classify(served, claim.images, claim.token, outcome)
                    else:
                        self._one_by_one(served, claim.images, claim.token, outcome)
                except TRANSIENT_ERRORS:
                    raise
                except Exception as error:
                    self._fail_all(claim.images, claim.token, error)
                    raise
            log.info(
                "chunk_finished",
                images=len(image_ids),
                claimed=len(claim.images),
                exhausted=len(claim.exhausted),
                one_by_one=bool(claim.images) and not fresh,
                total_ms=round((time.perf_counter() - started) * 1000, 1),
                **outcome.timings_ms,
                **outcome.counts(),
            )
        return outcome

    def _start_and_classify(
        self, served: ServedModel, images: list[ClaimedImage], token: str, outcome: ChunkOutcome
    ) -> None:
        """A fresh chunk: all its images counted as attempted at once, then one pass."""
        with self.sessions.begin() as session:
            held = set(lifecycle.start(session, [image.id for image in images], token))
        outcome.taken_over += [image.id for image in images if image.id not in held]
        self._classify_and_write(served, [i for i in images if i.id in held], token, outcome)

    def _one_by_one(
        self, served: ServedModel, images: list[ClaimedImage], token: str, outcome: ChunkOutcome
    ) -> None:
        """A chunk started before: each image counted as attempted, then finished, in turn."""
        for image in images:
            with self.sessions.begin() as session:
                held = lifecycle.start(session, [image.id], token)
            if held:
                self._classify_and_write(served, [image], token, outcome)
            else:  # the claim lapsed and another worker took the image over
                outcome.taken_over.append(image.id)

    def _classify_and_write(
        self,
        served: ServedModel,
        images: list[ClaimedImage],
        token: str,
        outcome: ChunkOutcome,
    ) -> None:
        """The model runs on each batch of prepared images (with ``overlap``, while the
        pool prepares the next ones), when the chunk's turn on it comes (another chunk in
        flight may hold it); then one write. Timed: how long the model waited for
        preprocessing, the wait for the turn, the model, the write, and the images' own
        preprocessing."""
        prepared: list[Prepared] = []
        classified: list[Classified] = []
        failures: dict[int, Failure] = {}
        waited_ms = turn_wait_ms = inference_ms = 0.0
        clock = time.perf_counter()
        for ready, failed in preprocess(
            images,
            served.classifier,
            max_pixels=self.max_pixels,
            max_frames=self.max_frames,
            max_bytes=self.max_file_bytes,
            quality=self.quality,
            overlap=self.overlap,
            threads=self.threads,
        ):
            start = time.perf_counter()
            waited_ms += (start - clock) * 1000
            with served.turn:
                turn = time.perf_counter()
                answered, unanswered = classify(
                    served.classifier,
                    [item for item in ready if item.input is not None],
                    max_new_tokens=self.max_new_tokens,
                )
            clock = time.perf_counter()
            turn_wait_ms += (turn - start) * 1000
            inference_ms += (clock - turn) * 1000
            prepared += ready
            classified += answered
            failures.update(failed | unanswered)
        start = time.perf_counter()
        masks = save_masks(
            [ImageMask(c.prepared.image.id, c.result.mask, c.prepared.size) for c in classified],
            served.classifier.mask_channels,
            mask_directory(self.masks_dir, served.name),
        )
        referral = Referral.for_model(
            served.classifier.labels, served.referral, self.referral_defaults
        )
        rows = [
            prediction_row(item, masks.get(item.prepared.image.id), referral) for item in classified
        ] + [unanswered_row(item) for item in prepared if item.input is None]
        with self.sessions.begin() as session:
            written = write_predictions(
                session,
                rows,
                model_version_id=served.version_id,
                worker=self.worker,
                token=token,
            )
            lifecycle.mark_failed(session, failures, token)
        outcome.written += written.inserted
        outcome.duplicates += sorted(set(written.done) - set(written.inserted))
        outcome.taken_over += sorted({row.image_id for row in rows} - set(written.done))
        outcome.failed.update(failures)
        outcome.add_timings(
            preprocess_ms=sum(item.preprocess_ms for item in prepared),
            preprocess_wait_ms=waited_ms,
            model_wait_ms=turn_wait_ms,
            inference_ms=inference_ms,
            write_ms=(time.perf_counter() - start) * 1000,
        )
        self._log_images(images, prepared, classified, failures, set(written.inserted))

    def _fail_all(self, images: list[ClaimedImage], token: str, error: Exception) -> None:
        failure = Failure(ReasonCode.WORKER_ERROR, f"{type(error).__name__}: {error}")
        log.exception("chunk_failed", images=len(images), error=failure.reason)
        with self.sessions.begin() as session:
            lifecycle.mark_failed(session, {image.id: failure for image in images}, token)

    @staticmethod
    def _log_images(
        images: list[ClaimedImage],
        prepared: list[Prepared],
        classified: list[Classified],
        failures: dict[int, Failure],
        written: set[int],
    ) -> None:
        """A line per image, bound to its batch and id; codes and labels, never paths."""
        assessed = {item.image.id: item for item in prepared}
        answered = {item.prepared.image.id: item for item in classified}
        for image in images:
            with structlog.contextvars.bound_contextvars(
                image_id=image.id, batch_id=image.batch_id
            ):
                if image.id in failures:
                    log.warning("image_failed", reason_code=failures[image.id].code)
                    continue
                item, answer = assessed[image.id], answered.get(image.id)
                columns = quality_columns(item.quality)
                log.info(
                    "image_classified",
                    label=answer.result.label if answer else None,
                    gradable=columns["gradable"],
                    quality_reason=columns["quality_reason"],
                    duplicate=image.id not in written,
                    attempts=image.attempts + 1,  # this start included
                    preprocess_ms=round(item.preprocess_ms, 1),
                    inference_ms=round(answer.inference_ms, 1) if answer else None,
                )
