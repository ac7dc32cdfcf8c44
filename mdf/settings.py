"""The one settings object of the service.

Every process (scheduler, workers, trainer, the command line) reads its
configuration from here. Precedence, lowest first: the defaults below, a
``.env`` file, environment variables prefixed ``MDF_``, then keyword arguments
(``mdf``'s flags, which ``mdf.cli`` passes as ``Settings(**flags)``). Each process
builds its settings once and passes them down; a command that changes one value
(``mdf worker --device``) makes a copy with ``settings.model_copy(update=...)``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MDF_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"),
        description="Working directory for the embedded database, broker, masks and reports.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: a SQLite file in the data directory.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Redis URL of the Celery broker; default: an embedded Redis server.",
    )
    inboxes: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Inbox folders scanned by the scheduler (comma-separated in the environment).",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for patient pseudonyms; default: a random key kept in the data dir.",
    )
    chunk_size: int = Field(default=16, ge=1, le=1024, description="Images per inference task.")
    requeue_after_s: int = Field(
        default=3600, ge=1, description="Queued or processing images older than this are re-sent."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Worker starts on one image before it is marked failed."
    )
    scan_cron: str = Field(
        default="0 1 * * *", description="When the scheduler scans the inboxes (crontab, UTC)."
    )
    requeue_cron: str = Field(
        default="*/15 * * * *", description="When the scheduler re-sends stalled work."
    )
    train_config: Path | None = Field(
        default=None, description="Training configuration (YAML or JSON) of the weekly run."
    )
    train_cron: str = Field(
        default="0 3 * * 0", description="When the trainer fine-tunes and evaluates (weekly)."
    )
    visibility_timeout_s: int = Field(
        default=6 * 3600, ge=60, description="Broker re-delivers a task unacknowledged this long."
    )
    intake_processes: int = Field(
        default=2, ge=1, le=64, description="Processes that read and parse files during intake."
    )
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="Larger images are rejected as decompression bombs."
    )
    min_image_side: int = Field(default=64, ge=1, description="Smaller images are rejected.")
    max_file_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Delivered files larger than this are rejected unread (file_too_large).",
    )
    max_frames: int = Field(
        default=64,
        ge=1,
        description="DICOM files with more frames are rejected (fundus cameras send a few).",
    )
    claim_lease_s: int = Field(
        default=300,
        ge=10,
        description="A worker's claim on a chunk expires unless renewed within this many seconds.",
    )
    analyst_role: str = Field(
        default="mdf_analyst",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL role that `mdf db upgrade` lets read the analysts' views only.",
    )
    model_dir: Path | None = Field(
        default=None, description="Checkpoint served when no model version is promoted yet."
    )
    device: str = Field(
        default="cpu",
        description="Torch device: cpu, cuda:N, or auto (the first GPU no other worker holds).",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    log_level: str = Field(default="INFO")
    max_new_tokens: int = Field(
        default=16, ge=1, le=512, description="Tokens an inference worker generates per image."
    )

    @field_validator("inboxes", mode="before")
    @classmethod
    def _split_inboxes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("scan_cron", "requeue_cron", "train_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        """Single-spaced, as Celery's ``crontab.from_string`` splits on one space."""
        fields = value.split()
        if len(fields) != 5:
            raise ValueError(f"expected five crontab fields, got {value!r}")
        return " ".join(fields)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mdf.sqlite3').resolve()}"

    @property
    def masks_dir(self) -> Path:
        return self.data_dir / "masks"

    def resolved_pseudonym_key(self) -> bytes:
        """The pseudonym key; a local key file is created once when none is configured."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        key_file = self.data_dir / "pseudonym.key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_hex(32))
        return key_file.read_text().strip().encode()
