"""The one settings object of the service.

Every process (scheduler, workers, trainer, the command line) reads its
configuration from here. Precedence, lowest first: the defaults below, a
``.env`` file, environment variables prefixed ``MDF_``, then keyword arguments
(``mdf``'s flags, which ``mdf.cli`` passes as ``Settings(**flags)``). Each process
builds its settings once and passes them down; a command that changes one value
(``mdf worker --device``) makes a copy with ``settings.model_copy(update=...)``.
Secrets may instead live in files, as Docker secrets do (``MDF_PSEUDONYM_KEY_FILE``,
``MDF_DATABASE_PASSWORD_FILE``, ``MDF_BROKER_PASSWORD_FILE``); none shows in ``repr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from mdf.secret_files import GENERATE_HINT, UnusableSecret, embedded_key, key_problem, read_secret

#: A referable label's threshold when neither its model version nor the settings name one.
DEFAULT_REFERRAL_THRESHOLD = 0.5


class Settings(BaseSettings):
    # "__" reaches into a mapping: MDF_QUALITY__MIN_FIELD=0.3 sets quality["min_field"].
    model_config = SettingsConfigDict(
        env_prefix="MDF_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    data_dir: Path = Field(
        default=Path("var"),
        description="Working directory for the embedded database, broker, masks and reports.",
    )
    database_url: str | None = Field(
        default=None,
        repr=False,  # may hold a password
        description="SQLAlchemy URL; default: a SQLite file in the data directory.",
    )
    broker_url: str | None = Field(
        default=None,
        repr=False,  # may hold a password
        description="Redis URL of the Celery broker; default: an embedded Redis server.",
    )
    inboxes: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Inbox folders scanned by the scheduler (comma-separated in the environment).",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for patient pseudonyms, at least 32 bytes; required with a database "
        "other than SQLite; default: a random key kept in the data dir.",
    )
    pseudonym_key_file: Path | None = Field(
        default=None, description="File holding the pseudonym key (Docker secrets)."
    )
    database_password_file: Path | None = Field(
        default=None, description="File holding the password of MDF_DATABASE_URL (Docker secrets)."
    )
    broker_password_file: Path | None = Field(
        default=None, description="File holding the password of MDF_BROKER_URL (Docker secrets)."
    )
    chunk_size: int = Field(default=16, ge=1, le=1024, description="Images per inference task.")
    chunks_in_flight: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Chunks an inference worker runs at once, taking turns on the model while "
        "the others are prepared; 0: 2 with the model off the CPU, 1 on it.",
    )
    preprocess_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Threads a worker prepares a chunk's images in; 0: one per CPU it may run "
        "on. Workers sharing a host's CPUs (one per GPU) each want their share.",
    )
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
    vision_tiles: int = Field(
        default=1,
        ge=1,
        description="Vision tiles a served model computes per photograph; a checkpoint trained "
        "with another count is refused (its answers would differ from the validated ones).",
    )

    # Screening outcomes: gradability and referral (README "Settings" and "For analysts").
    quality: dict[str, float] = Field(
        default_factory=dict,
        description="Gradability thresholds that differ from mdf.imaging.quality's defaults, "
        "by name: MDF_QUALITY__MIN_FIELD=0.3, or MDF_QUALITY as a JSON object.",
    )
    referable_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["inherited"],
        description="Labels whose finding refers the patient (comma-separated). Inherited "
        "retinal disease needs a specialist (genetic testing, gene therapy) that a screening "
        "program refers to; acquired disease is followed within the program.",
    )
    referral_thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Probability from which a referable label refers, per label (others: "
        f"{DEFAULT_REFERRAL_THRESHOLD}); only for a model version without thresholds of its "
        "own: MDF_REFERRAL_THRESHOLDS__INHERITED=0.4, or a JSON object.",
    )
    referral_target_sensitivity: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Sensitivity at which training sets each referable label's threshold, on "
        "the validation patients.",
    )

    # DICOM networking: `mdf dicom listen` receives, `mdf pull` queries a PACS over DICOMweb.
    dicom_ae_title: str = Field(
        default="MDF",
        pattern=r"^[!-~][ -~]{0,15}$",
        description="AE title of `mdf dicom listen` (peers call it by this name).",
    )
    dicom_host: str = Field(default="127.0.0.1", description="Address `mdf dicom listen` binds.")
    dicom_port: int = Field(default=11112, ge=1, le=65535, description="Its DICOM port.")
    dicom_allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to send (comma-separated); required to listen.",
    )
    dicom_study_quiet_s: float = Field(
        default=120.0,
        gt=0,
        description="A received study goes to intake when none of it arrived for this long.",
    )
    dicom_spool_dir: Path | None = Field(
        default=None,
        description="Where received and pulled instances are kept; default: DATA_DIR/dicom.",
    )
    dicom_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate: `mdf dicom listen` speaks TLS only."
    )
    dicom_tls_key_file: Path | None = Field(
        default=None, validate_default=True, description="Its PEM private key."
    )
    dicom_tls_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle: peers must show a certificate it signed."
    )
    dicomweb_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="DICOMweb base URLs the nightly scan pulls from first (comma-separated).",
    )
    dicomweb_modalities: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["OP", "XC", "OT"],
        description="Modalities a pull asks for (comma-separated).",
    )
    dicomweb_days: int = Field(
        default=3, ge=1, description="The nightly pull's window: studies of the last N days."
    )
    dicomweb_username: str | None = Field(
        default=None, description="User name for HTTP basic authentication to the sources."
    )
    dicomweb_password_file: Path | None = Field(
        default=None, description="File holding that user's password (basic authentication)."
    )
    dicomweb_token_file: Path | None = Field(
        default=None, description="File holding a bearer token (instead of basic authentication)."
    )
    dicomweb_retries: int = Field(
        default=5, ge=0, le=20, description="Retries of a failed DICOMweb request, with backoff."
    )

    # Observability: Prometheus metrics of the long-running processes (mdf/metrics.py).
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port where `mdf scheduler`, `mdf worker` and `mdf dicom listen` serve "
        "Prometheus metrics at /metrics, on every interface; unset: no metrics served.",
    )

    @field_validator("dicom_allowed_aes", "dicomweb_sources", "dicomweb_modalities", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dicomweb_password_file", "dicomweb_token_file")
    @classmethod
    def _dicomweb_secret_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        read_secret(path)
        if info.field_name == "dicomweb_password_file" and not info.data.get("dicomweb_username"):
            raise ValueError("needs MDF_DICOMWEB_USERNAME")
        return path

    @field_validator("dicom_tls_key_file")
    @classmethod
    def _tls_pair(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if (path is None) != (info.data.get("dicom_tls_cert_file") is None):
            raise ValueError("set MDF_DICOM_TLS_CERT_FILE and MDF_DICOM_TLS_KEY_FILE together")
        return path

    @property
    def resolved_dicom_spool_dir(self) -> Path:
        return self.dicom_spool_dir or self.data_dir / "dicom"

    @field_validator("inboxes", "referable_labels", mode="before")
    @classmethod
    def _split_inboxes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("pseudonym_key_file", "database_password_file", "broker_password_file")
    @classmethod
    def _secret_file_holds_a_secret(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """A configured secret file that is missing or empty stops every command at once."""
        if path is None:
            return None
        read_secret(path)
        data = info.data
        if info.field_name == "pseudonym_key_file" and data.get("pseudonym_key") is not None:
            raise ValueError("set MDF_PSEUDONYM_KEY or MDF_PSEUDONYM_KEY_FILE, not both")
        if info.field_name == "database_password_file" and not data.get("database_url"):
            raise ValueError("needs MDF_DATABASE_URL (the embedded SQLite has no password)")
        if info.field_name == "broker_password_file" and not data.get("broker_url"):
            raise ValueError("needs MDF_BROKER_URL (the embedded Redis has no password)")
        return path

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
        """The database URL, with the password of MDF_DATABASE_PASSWORD_FILE when one is set."""
        if not self.database_url:
            return f"sqlite:///{(self.data_dir / 'mdf.sqlite3').resolve()}"
        if self.database_password_file is None:
            return self.database_url
        url = make_url(self.database_url).set(password=read_secret(self.database_password_file))
        return url.render_as_string(hide_password=False)

    def referral_threshold(self, label: str) -> float:
        """The configured threshold of a referable label, for a version that recorded none."""
        return self.referral_thresholds.get(label, DEFAULT_REFERRAL_THRESHOLD)

    @property
    def masks_dir(self) -> Path:
        return self.data_dir / "masks"

    def resolved_pseudonym_key(self) -> bytes:
        """The pseudonym key, or :class:`UnusableSecret` (one line) when it would not protect
        patients. Commands that pseudonymise call it before they touch the database.

        Only a SQLite database gets a default key (a file in the data directory, created
        once): a shared database outlives the data directory of any one machine, and a lost
        key splits every patient's history in two.
        """
        if self.pseudonym_key is not None:
            source, key = "MDF_PSEUDONYM_KEY", self.pseudonym_key.get_secret_value()
        elif self.pseudonym_key_file is not None:
            source, key = "MDF_PSEUDONYM_KEY_FILE", read_secret(self.pseudonym_key_file)
        elif not self.database_url or make_url(self.database_url).get_backend_name() == "sqlite":
            path = self.data_dir / "pseudonym.key"
            source, key = f"the key file {path}", embedded_key(path)
        else:
            raise UnusableSecret(
                "MDF_PSEUDONYM_KEY or MDF_PSEUDONYM_KEY_FILE must be set with a database other "
                f"than SQLite; {GENERATE_HINT}"
            )
        if problem := key_problem(key):
            raise UnusableSecret(f"{source} {problem}: refused as a pseudonym key; {GENERATE_HINT}")
        return key.encode()

    # Results sent back as DICOM SR and SEG (delivery/; README "DICOM networking").
    results_destinations: Annotated[
        list[
            Annotated[
                str,
                Field(
                    pattern=r"^(dicomweb:https?://[^\s,]+|dicom:[^@\\\s][^@\\]{0,15}@[\w.-]+:\d{1,5})$"
                ),
            ]
        ],
        NoDecode,
    ] = Field(
        default_factory=list,
        description="Where each finished DICOM study's SR and SEG go, comma-separated: "
        "dicomweb:URL (STOW-RS, with the MDF_DICOMWEB_ credentials) or dicom:AET@HOST:PORT "
        "(C-STORE, calling as MDF_DICOM_AE_TITLE); none: nothing is delivered on its own.",
    )
    results_retries: int = Field(
        default=8, ge=0, le=20, description="Retries of a study whose delivery failed."
    )
    results_backoff_s: int = Field(
        default=30,
        ge=1,
        description="Wait before the first retry of a delivery; doubled at each retry, at most "
        "an hour.",
    )

    @field_validator("results_destinations", mode="before")
    @classmethod
    def _split_destinations(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
