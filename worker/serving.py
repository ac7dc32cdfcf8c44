"""Which model version a worker serves, loaded once per process and swapped between chunks.

The database decides: the promoted row of ``model_versions`` is served. Before
anything was ever promoted, the checkpoint in ``MDF_MODEL_DIR`` is registered as a
version (named after its manifest hash) and served, so a first night needs no
training. ``ModelServer.serving()`` runs around every chunk: one small query, and a
reload only when the promotion changed, so a chunk is always classified by one
version. A worker may run two chunks at once (one on the model while the other is
prepared): a new version is then loaded only once no chunk holds the one served, so no
more than two models are ever in memory, as with one chunk at a time, and the chunks take
turns on the model (``ServedModel.turn``).

A promoted version is served only when its checkpoint's manifest hash is the one
registered with it: a checkpoint replaced on disk with a rewritten manifest is
refused, with the version name and both hashes in the log line (which names a file by its
path inside the checkpoint, never the checkpoint's directory). A checkpoint trained with
another number of vision tiles than the worker's (``MDF_VISION_TILES``) is refused too,
before any weight is read: its answers would differ from the ones it was validated with.
One written before checkpoints recorded that number is served with what it was trained with,
all four tiles of Mllama's processor. A promoted checkpoint
that is refused or fails to load is logged and not retried by this process; the worker
keeps serving what it had rather than stopping the night, or refuses to start with
nothing to serve.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import structlog
from sqlalchemy.orm import Session, sessionmaker

from db.model_versions import promoted_version, register_version
from db.session import session_factory
from mdf.metrics import observe_model

log = structlog.get_logger(__name__)


class Classification(Protocol):
    """One image's answer (``mdf_model.ClassificationResult``)."""

    @property
    def label(self) -> str: ...
    @property
    def probabilities(self) -> Mapping[str, float]: ...
    @property
    def text(self) -> str: ...
    @property
    def text_label(self) -> str | None: ...
    @property
    def agrees(self) -> bool: ...
    @property
    def mask(self) -> np.ndarray: ...  # (C, N, N), empty for a model without a U-Net


@runtime_checkable
class Classifier(Protocol):
    """What the worker calls on a model (``mdf_model.Classifier``), without importing torch.

    The prepared input is opaque to the worker: it only hands it back.
    """

    @property
    def version_hash(self) -> str: ...
    @property
    def labels(self) -> Sequence[str]: ...
    @property
    def mask_channels(self) -> Sequence[str]: ...  # the planes of a result's mask, in order
    @property
    def input_side(self) -> int:
        """The longest side ``prepare`` resamples a picture to: decoding at least this
        large on the long side gives the same input, up to resampling."""

    def prepare(self, image: np.ndarray, clinical_text: str | None) -> Any:
        """The model's input for one picture; ValueError for a picture it cannot use."""

    def classify_prepared(
        self, batch: Sequence[Any], *, max_new_tokens: int
    ) -> Sequence[Classification]: ...


Loader = Callable[..., Classifier]  # load_classifier(path, device=..., vision_tiles=...)


class ModelUnavailable(RuntimeError):
    """No model version can be served: nothing promoted, no usable MDF_MODEL_DIR."""


class ModelRefused(RuntimeError):
    """The loaded checkpoint is not the registered version (its manifest hash differs)."""


@dataclass(frozen=True)
class ServedModel:
    version_id: int
    name: str
    classifier: Classifier
    referral: dict[str, Any] | None  # the version's referral thresholds (model_versions)
    # Held for each forward pass: chunks in flight together take turns on the model.
    turn: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


class _Version(NamedTuple):
    """A promoted version, as the database has it."""

    version_id: int
    name: str
    path: Path
    manifest_sha256: str
    referral: dict[str, Any] | None


class ModelServer:
    """The classifier this process serves; a chunk runs inside ``serving()``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        model_dir: Path | None,
        device: str,
        vision_tiles: int,
        loader: Loader | None = None,
    ):
        self._sessions = sessions
        self._model_dir = model_dir
        self._device = device
        self._vision_tiles = vision_tiles
        self._loader = loader
        self._served: ServedModel | None = None
        self._broken: dict[int, str] = {}  # version id -> why it cannot be served
        self._changing = threading.Condition()  # held to look at or change what is served
        self._chunks = 0  # chunks inside serving()
        self._exclusive = False  # a chunk has the model to itself, or waits to

    def _load(self, path: Path, expected: str | None = None) -> Classifier:
        """The checkpoint at ``path``; with ``expected``, only if its manifest hash is that.

        The real loader refuses a changed checkpoint before it reads any weight; the hash
        of what was loaded is compared again here, so no loader serves another version.
        """
        if self._loader is None:
            from mdf_model import load_classifier  # torch is imported only by workers

            classifier = load_classifier(
                path,
                device=self._device,
                expected_manifest_sha256=expected,
                vision_tiles=self._vision_tiles,
            )
        else:
            classifier = self._loader(path, device=self._device, vision_tiles=self._vision_tiles)
        if expected is not None and classifier.version_hash != expected:
            raise ModelRefused(
                f"manifest hash {classifier.version_hash} differs from the registered "
                f"{expected}: the checkpoint was replaced after it was registered"
            )
        return classifier

    @contextmanager
    def serving(self, *, alone: bool = False) -> Iterator[ServedModel]:
        """The version a chunk is classified by, from start to end. ``alone``: no other chunk
        runs beside this one (a chunk started before, whose crash must be charged to its own
        images only)."""
        with self._changing:
            served = self._enter(alone)
        try:
            yield served
        finally:
            with self._changing:
                self._chunks -= 1
                if alone:
                    self._exclusive = False
                self._changing.notify_all()

    def current(self) -> ServedModel:
        """The version to serve now (the worker checks it can serve one before it starts)."""
        with self._changing:
            return self._serve(self._promoted())

    def _enter(self, alone: bool) -> ServedModel:
        """Under ``_changing``: a chunk that runs alone, or one that loads another version,
        has the model to itself. It waits for the chunks running to end, and the chunks
        that come meanwhile wait for it (none can keep it waiting for ever)."""
        self._changing.wait_for(lambda: not self._exclusive)
        target = self._promoted()
        if (alone or self._stale(target)) and self._chunks:
            self._exclusive = True
            try:
                self._changing.wait_for(lambda: self._chunks == 0)
            finally:
                self._exclusive = False
                self._changing.notify_all()
            target = self._promoted()  # again: it may have changed back meanwhile
        served = self._serve(target)  # a load holds _changing: no chunk starts beside it
        self._exclusive = alone
        self._chunks += 1
        return served

    def _stale(self, target: _Version | None) -> bool:
        """Whether serving ``target`` means loading a model."""
        if target is None:
            return self._served is None
        loaded = self._served is not None and self._served.version_id == target.version_id
        return not loaded and target.version_id not in self._broken

    def _serve(self, target: _Version | None) -> ServedModel:
        if target is None:
            return self._served or self._serve_model_dir()
        version_id, name, path, expected, referral = target
        if self._served is not None and self._served.version_id == version_id:
            return self._served
        if version_id not in self._broken:
            try:
                classifier = self._load(path, expected)
            except Exception as error:
                self._broken[version_id] = reason = _without(error, path)
                log.error("model_load_failed", model_version=name, error=reason)
            else:
                return self._swap(ServedModel(version_id, name, classifier, referral))
        if self._served is None:
            raise ModelUnavailable(
                f"promoted model version {name} cannot be loaded: {self._broken[version_id]}"
            )
        return self._served

    def _promoted(self) -> _Version | None:
        with self._sessions() as session:
            promoted = promoted_version(session)
            if promoted is None:
                return None
            return _Version(
                promoted.id,
                promoted.name,
                Path(promoted.path),
                promoted.manifest_sha256,
                promoted.referral,
            )

    def _serve_model_dir(self) -> ServedModel:
        if self._model_dir is None:
            raise ModelUnavailable(
                "no model version is promoted and MDF_MODEL_DIR is not set: point MDF_MODEL_DIR "
                "at a checkpoint directory, or train and promote a version"
            )
        try:
            classifier = self._load(self._model_dir)
        except Exception as error:
            raise ModelUnavailable(  # logged: the message names no directory
                "no model version is promoted and MDF_MODEL_DIR cannot be loaded: "
                + _without(error, self._model_dir)
            ) from error
        with self._sessions.begin() as session:
            version = register_version(
                session,
                path=self._model_dir,
                manifest_sha256=classifier.version_hash,
                labels=list(classifier.labels),
            )
            served = ServedModel(version.id, version.name, classifier, version.referral)
        return self._swap(served)

    def _swap(self, served: ServedModel) -> ServedModel:
        previous = self._served.name if self._served else None
        self._served = served
        observe_model(served.name)
        log.info("model_serving", model_version=served.name, previous=previous)
        return served


def _without(error: Exception, checkpoint: Path) -> str:
    """Why a checkpoint cannot be served, for a log line: a loader's own errors name files
    inside the checkpoint, and any other error's mention of its directory becomes "the
    checkpoint" (a site's directory names may identify someone)."""
    return str(error).replace(str(checkpoint), "the checkpoint")


@functools.cache
def model_server(
    database_url: str, model_dir: Path | None, device: str, vision_tiles: int
) -> ModelServer:
    """The process's one server: the model is loaded once per worker process."""
    return ModelServer(
        session_factory(database_url),
        model_dir=model_dir,
        device=device,
        vision_tiles=vision_tiles,
    )
