"""Typed configuration, validated once at start-up.

Values come from the embedded defaults, then the YAML file, then ``DRISHTIKSHA_...`` environment
variables (``__`` separates nesting levels, e.g. ``DRISHTIKSHA_API__PORT=9000``). The YAML file
is the first of: ``--config``, ``DRISHTIKSHA_CONFIG``, ``/etc/drishtiksha/config.yaml``,
``configs/default.yaml`` under the working directory; with none, the embedded defaults alone.
Relative paths resolve against the directory the daemon is started in.
"""

from __future__ import annotations

import difflib
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from detectors.errors import DrishtikshaError

ENV_PREFIX = "DRISHTIKSHA_"
SYSTEM_CONFIG_PATH = Path("/etc/drishtiksha/config.yaml")
DEFAULT_CONFIG_PATH = Path("configs/default.yaml")
EMBEDDED = "embedded defaults"


class ConfigError(DrishtikshaError):
    """The configuration is invalid."""

    code = "invalid_config"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Section):
    url: str = Field(
        "sqlite:///var/drishtiksha.db",
        description="SQLAlchemy URL: sqlite:///relative/or/absolute.db or "
        "postgresql+psycopg://user@host/db.",
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return url


class InboxConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Unique inbox name.")
    path: Path = Field(Path("var/inbox"), description="Folder watched for new videos.")
    work: Path = Field(
        Path("var/work"),
        description="Where files wait while their job is open; must be on the inbox's "
        "filesystem so that the move out of the inbox is an atomic rename.",
    )
    done: Path = Field(Path("var/done"), description="Finished videos and their .verdict.json.")
    failed: Path = Field(Path("var/failed"), description="Rejected videos and their .error.json.")
    detectors: list[str] = Field(
        default_factory=list,
        description="Detector keys every video from this inbox goes through; absent or empty: "
        "every detector that has a section under 'detectors'.",
    )
    priority: int = Field(0, description="Higher runs first.")
    polling: bool = Field(
        False,
        description="Poll the folder instead of inotify: needed for SMB/NFS shares, where "
        "remote writers produce no events.",
    )
    polling_interval_s: float = Field(2.0, gt=0)
    quiet_s: float = Field(
        2.0, gt=0, description="A file is complete after this long without change."
    )
    rescan_s: float = Field(
        60.0, gt=0, description="Periodic full scan that catches events the observer missed."
    )
    recursive: bool = False
    open_write_wait_s: float = Field(
        600.0,
        gt=0,
        description="With inotify, a file that was written to waits for its writer to close "
        "it, for at most this long after its last event.",
    )


class LimitsConfig(_Section):
    max_file_bytes: int = Field(4 * 1024**3, gt=0)
    max_duration_s: float = Field(3600.0, gt=0)
    max_pixels: int = Field(3840 * 2160, gt=0, description="Maximum width x height of a frame.")
    max_decoded_frames: int = Field(
        200_000, gt=0, description="Bounds decoding work for endless or hostile streams."
    )


class DecodeConfig(_Section):
    max_side: int = Field(
        1280, ge=64, description="Frames are downscaled so their longest side fits this."
    )


class BatchingConfig(_Section):
    max_videos: int = Field(8, ge=1, description="Videos per inference batch.")
    max_wait_s: float = Field(
        0.5, ge=0, description="How long a batch waits to fill before it runs anyway."
    )
    prepare_workers: int = Field(
        2, ge=1, description="Threads decoding and preparing videos on the CPU."
    )


class QueueConfig(_Section):
    lease_s: float = Field(120.0, gt=0, description="A claimed job's lease; renewed while held.")
    max_attempts: int = Field(3, ge=1)
    retry_base_s: float = Field(5.0, gt=0, description="First retry delay; doubles each time.")
    poll_s: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, time to finish held jobs before releasing them."
    )
    gc_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often each process removes what is kept only for a while, as "
        "`drishtiksha gc` does: fetched bytes of jobs no longer running, renderings and uploads "
        "past their limits, downloads of finished S3 jobs.",
    )
    finalize_sweep_s: float = Field(
        10.0,
        gt=0,
        description="How often the ingest side places the files of jobs that ended without "
        "their worker doing it (failed by max_attempts, a move that failed); also how long "
        "after a job ends before the sweep takes it over.",
    )
    heartbeat_s: float = Field(
        2.0,
        gt=0,
        description="How often a worker records that it is alive (its capabilities too). "
        "Default 2, or a third of dead_after_s when that is less.",
    )
    dead_after_s: float = Field(
        10.0,
        gt=0,
        description="A worker silent this long is declared dead by any other process: its "
        "jobs are reclaimed at once rather than when their leases run out. At least three "
        "heartbeats and at most half of lease_s; default 10, or half of lease_s when that is "
        "less. Hosts sharing a queue need clocks in sync to well within it.",
    )

    @model_validator(mode="after")
    def _beats_fit(self) -> QueueConfig:
        # Short leases (tests, benchmarks) bring the unset defaults down with them, so that
        # setting lease_s alone always gives a valid section.
        if "dead_after_s" not in self.model_fields_set:
            self.dead_after_s = min(self.dead_after_s, self.lease_s / 2)
        if "heartbeat_s" not in self.model_fields_set:
            self.heartbeat_s = min(self.heartbeat_s, self.dead_after_s / 3)
        if self.dead_after_s > self.lease_s / 2:
            raise ValueError(
                f"dead_after_s ({self.dead_after_s:g}) must be at most half of lease_s "
                f"({self.lease_s:g}), or a dead worker's leases run out before it is noticed"
            )
        if self.heartbeat_s > self.dead_after_s / 3:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s:g}) must be at most a third of dead_after_s "
                f"({self.dead_after_s:g}), so that one late heartbeat never gets a live worker "
                "declared dead"
            )
        return self


# admin: everything, and server paths (work, done, inbox files) in what the API shows.
Scope = Literal["read", "submit", "admin"]


def _all_scopes() -> list[Scope]:
    return ["read", "submit"]


class ApiKeyConfig(_Section):
    """One API key and what it may do."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Who holds the key (shown in logs)."
    )
    key: str = Field(min_length=16, description="The secret, sent in the X-API-Key header.")
    scopes: list[Scope] = Field(
        default_factory=_all_scopes,
        min_length=1,
        description="read: GET the jobs, videos, detectors and status; submit: upload, cancel "
        "and render visualisations; admin: all of it, with the server's file paths.",
    )


class ApiConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description="API keys. The API_KEY environment variable adds one with both scopes. "
        "With no key at all the API is open, which is allowed on a loopback host only.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve without any API key on a non-loopback host (behind a proxy)."
    )
    health_requires_key: bool = Field(False, description="Require a key for / and /health.")
    metrics_requires_key: bool = Field(False, description="Require a key for /metrics.")
    upload_dir: Path = Field(
        Path("var/uploads"), description="Where uploaded videos wait while their job is open."
    )
    max_upload_bytes: int | None = Field(
        None, gt=0, description="Largest accepted upload; default: limits.max_file_bytes."
    )
    max_concurrent_uploads: int = Field(
        4, ge=1, description="Uploads received at once; more are refused with 503."
    )
    keep_uploads_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Judged uploads are kept under <upload_dir>/kept/ so the desk can play them "
        "and a failed one can be retried, oldest deleted past this total; 0 deletes each upload "
        "once its job ends.",
    )
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="An upload that sends nothing for this long is dropped (408)."
    )
    upload_min_bytes_per_s: float = Field(
        16384.0,
        ge=0,
        description="An upload averaging less than this over upload_rate_window_s is dropped "
        "(408), so trickling clients cannot hold the upload slots.",
    )
    upload_rate_window_s: float = Field(
        30.0, gt=0, description="The window upload_min_bytes_per_s is averaged over."
    )
    upload_deadline_s: float = Field(
        3600.0, gt=0, description="Longest one upload may take from first byte to last (408)."
    )
    max_uploads_per_client: int = Field(
        2,
        ge=1,
        description="Uploads one API key (or, with no keys, one client address) may have in "
        "progress at once; more are refused with 503.",
    )
    max_form_parts: int = Field(
        8,
        ge=1,
        description="Parts a multipart upload may have before the video (400 past it).",
    )
    max_form_field_bytes: int = Field(
        65536, ge=1, description="Largest multipart part other than the video (413 past it)."
    )
    header_timeout_s: float = Field(
        15.0,
        gt=0,
        description="A connection must send a complete request head within this long of "
        "opening or of its previous answer, or it is closed (slow or idle clients).",
    )
    artefacts_max_files: int = Field(
        200, ge=1, description="Rendered visualisations kept; the oldest are deleted past it."
    )
    artefacts_max_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Total size of kept visualisations; the oldest are deleted past it.",
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest a request waits for its job (/analyze, ?wait=); then 504 or the "
        "job as it stands.",
    )
    default_model: str = Field(
        "",
        description="Detector for /analyze* when ?model= is absent; must be one an inbox uses "
        "(empty: the first detector of the first inbox, or of the first SQS source).",
    )
    analyze_priority: int = Field(
        100, description="Queue priority of /analyze* jobs: a client is waiting on them."
    )
    desk_session_s: float = Field(
        12 * 3600.0,
        gt=0,
        description="How long a sign-in to the desk (the web page at /desk/) lasts.",
    )


# "reviewed": a person recorded or changed a review of the job (on the desk or over the API).
WebhookEvent = Literal["done", "failed", "cancelled", "reviewed"]


class WebhookTarget(_Section):
    url: str = Field(pattern=r"^https?://", description="Receives a POST per job event.")
    secret: str | None = Field(
        None,
        min_length=16,
        description="Signs each body: X-Drishtiksha-Signature: sha256=HMAC(secret, "
        "'<X-Drishtiksha-Timestamp>.<body>').",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list[WebhookEvent](["done", "failed"]), min_length=1
    )


class WebhooksConfig(_Section):
    targets: list[WebhookTarget] = Field(default_factory=list)
    retry_base_s: float = Field(
        2.0, gt=0, description="First retry delay; doubles each time, up to retry_max_s."
    )
    retry_max_s: float = Field(900.0, gt=0, description="Longest wait between two attempts.")
    retry_for_s: float = Field(
        86400.0,
        gt=0,
        description="A failing delivery is retried while its waits add up to no more than "
        "this (time the daemon was down does not count), then parked as dead until it is "
        "sent again by hand (drishtiksha webhooks retry).",
    )
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="Also park a delivery after this many attempts in a row (default: only "
        "retry_for_s limits them).",
    )
    timeout_s: float = Field(10.0, gt=0, description="Per-attempt HTTP timeout.")
    poll_s: float = Field(1.0, gt=0, description="How often the dispatcher looks for work.")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class FusionConfig(_Section):
    """How the detectors' results combine into the overall verdict."""

    rule: Literal["any_fake", "weighted_mean"] = Field(
        "any_fake",
        description="any_fake: FAKE if any detector says FAKE (the conservative moderation "
        "rule). weighted_mean: the weighted mean of the detectors' (calibrated) fake "
        "probabilities against `threshold` and `uncertain_band`.",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="weighted_mean: weight per detector key (>= 0); unlisted detectors weigh 1.",
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="weighted_mean: FAKE at or above this mean."
    )
    uncertain_band: tuple[float, float] | None = Field(
        None, description="weighted_mean: a mean in [low, high] is UNCERTAIN."
    )

    @model_validator(mode="after")
    def _valid(self) -> FusionConfig:
        negative = sorted(k for k, w in self.weights.items() if w < 0)
        if negative:
            raise ValueError(f"weights must be >= 0; negative for {negative}")
        band = self.uncertain_band
        if band is not None and not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ValueError("uncertain_band must be [low, high] with 0 <= low <= high <= 1")
        return self


class SqsSourceConfig(_Section):
    """An SQS queue that receives S3 event notifications (directly or wrapped in SNS).

    Credentials come the AWS way (environment, profile, instance role), never from this file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique source name (logs).")
    queue_url: str = Field(min_length=1, description="URL of the SQS queue.")
    region: str | None = Field(None, description="AWS region; default: the AWS configuration.")
    endpoint_url: str | None = Field(
        None, description="Non-AWS endpoint (e.g. a local S3/SQS emulator) for SQS and S3."
    )
    profile: str | None = Field(None, description="AWS profile; default: the AWS configuration.")
    prefixes: list[str] = Field(
        default_factory=list, description="Only object keys with one of these prefixes; [] = all."
    )
    suffixes: list[str] = Field(
        default_factory=list,
        description="Only object keys ending in one of these (case-insensitive); [] = all.",
    )
    detectors: list[str] = Field(
        default_factory=list,
        description="Detector keys every object from this queue goes through; absent or empty: "
        "every detector that has a section under 'detectors'.",
    )
    priority: int = Field(0, description="Higher runs first.")
    work: Path = Field(
        Path("var/work-s3"),
        description="Where downloaded objects wait while their job is open (work/<job id>/). "
        "Not an inbox's work folder: its crash recovery would take them for inbox files.",
    )
    on_poison: Literal["leave", "delete"] = Field(
        "leave",
        description="A message that can never become a job (not JSON, not an S3 event, object "
        "gone or too large): leave it to the queue's redrive policy (dead-letter queue), or "
        "delete it.",
    )
    wait_time_s: int = Field(20, ge=0, le=20, description="SQS long-poll wait.")
    max_messages: int = Field(10, ge=1, le=10, description="Messages per receive.")
    visibility_timeout_s: int = Field(
        120,
        ge=1,
        le=43200,
        description="Visibility timeout of received messages; extended every third of it "
        "while a message is being handled.",
    )


class BlobsConfig(_Section):
    """Where a job's bytes live so that a worker on any host can read them.

    ``local``: in this host's work folders (one host, or workers that share its filesystem).
    ``s3``: in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2), content-addressed; workers
    fetch each job's bytes into ``scratch`` and check their sha256. Credentials come the AWS way
    (environment, profile, instance role), never from this file."""

    kind: Literal["local", "s3"] = "local"
    bucket: str | None = Field(None, description="The bucket (kind s3).")
    prefix: str = Field(
        "drishtiksha",
        pattern=r"^[A-Za-z0-9!_.*'()/-]*$",
        description="Key prefix: videos under <prefix>/videos/<sha256>, verdicts under "
        "<prefix>/verdicts/<sha256>/<job id>.json.",
    )
    endpoint_url: str | None = Field(
        None, description="Non-AWS endpoint (MinIO, Ceph, R2, a local emulator)."
    )
    region: str | None = Field(None, description="Region; default: the AWS configuration.")
    profile: str | None = Field(None, description="AWS profile; default: the AWS configuration.")
    part_bytes: int = Field(
        16 * 1024**2,
        ge=5 * 1024**2,
        description="Multipart upload part size (S3's minimum is 5 MiB); smaller files go in "
        "one request.",
    )
    verdicts: Literal["prefix", "beside", "off"] = Field(
        "prefix",
        description="Write each finished job's verdict document to the store: under the "
        "prefix, beside the original object of an S3-notified job (<key>.verdict.json, "
        "others under the prefix), or not at all.",
    )
    scratch: Path = Field(
        Path("var/scratch"),
        description="Where a worker keeps the bytes it fetched while their job runs; each "
        "job's copy is removed when it ends.",
    )

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> BlobsConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("blobs.kind s3 needs blobs.bucket")
        return self


class Config(_Section):
    # Where the values came from (file and how it was found), for logs and `config check`.
    _source: str = PrivateAttr(EMBEDDED)

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N."
    )
    cpu_threads: int = Field(0, ge=0, description="torch threads on CPU; 0 keeps torch's choice.")
    inboxes: list[InboxConfig] = Field(default_factory=lambda: [InboxConfig()])
    detectors: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"face-cues-v1": {"weights": "manifest"}, "c2pa-provenance": {}},
        description="Per-detector settings by key; each detector validates its own section.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    sqs: list[SqsSourceConfig] = Field(
        default_factory=list, description="SQS queues of S3 event notifications to ingest."
    )
    blobs: BlobsConfig = Field(default_factory=BlobsConfig)
    host_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=255,
        description="This host's name in the shared queue (default: the machine's name). "
        "Only the host a file came from moves it to done/ or failed/, so hosts sharing one "
        "database need distinct names.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        sources: list[InboxConfig | SqsSourceConfig] = [*self.inboxes, *self.sqs]
        for source in sources:
            if not source.detectors:
                source.detectors = list(self.detectors)
            if not source.detectors:
                raise ValueError(
                    f"{source.name!r} has no detectors: list some, or configure at least one "
                    "under 'detectors'"
                )
        keys = self.all_detector_keys()
        if not self.api.default_model and keys:
            self.api.default_model = keys[0]
        names = [inbox.name for inbox in self.inboxes]
        if len(set(names)) != len(names):
            raise ValueError(f"inbox names must be unique, got {names}")
        for inbox in self.inboxes:
            missing = [key for key in inbox.detectors if key not in self.detectors]
            if missing:
                raise ValueError(
                    f"inbox {inbox.name!r} uses detectors with no section under 'detectors': "
                    f"{missing}"
                )
        for source in self.sqs:
            missing = [key for key in source.detectors if key not in self.detectors]
            if missing:
                raise ValueError(
                    f"sqs source {source.name!r} uses detectors with no section under "
                    f"'detectors': {missing}"
                )
        unknown = sorted(k for k in self.fusion.weights if k not in self.detectors)
        if unknown:
            raise ValueError(f"fusion.weights names detectors with no section: {unknown}")
        return self

    def resolved(self, base: Path) -> Config:
        """A copy whose relative paths (folders, SQLite file) are anchored at ``base``."""
        inboxes = [
            inbox.model_copy(
                update={
                    k: (base / getattr(inbox, k)).resolve()
                    for k in ("path", "work", "done", "failed")
                }
            )
            for inbox in self.inboxes
        ]
        url = self.database.url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            url = "sqlite:///" + str((base / url.removeprefix("sqlite:///")).resolve())
        api = self.api.model_copy(update={"upload_dir": (base / self.api.upload_dir).resolve()})
        sqs = [s.model_copy(update={"work": (base / s.work).resolve()}) for s in self.sqs]
        blobs = self.blobs.model_copy(update={"scratch": (base / self.blobs.scratch).resolve()})
        return self.model_copy(
            update={
                "inboxes": inboxes,
                "database": DatabaseConfig(url=url),
                "api": api,
                "sqs": sqs,
                "blobs": blobs,
            }
        )

    @property
    def source(self) -> str:
        """Where the values came from: a file and how it was found, or the embedded defaults."""
        return self._source

    def all_detector_keys(self) -> list[str]:
        """Every detector some inbox or SQS source uses, in first-use order."""
        sources: list[InboxConfig | SqsSourceConfig] = [*self.inboxes, *self.sqs]
        return list(dict.fromkeys(k for source in sources for k in source.detectors))


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # YAML parsing gives env values the same types a YAML file would (numbers, lists, bools).
        node[path[-1]] = yaml.safe_load(value) if value else value
    return overrides


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_errors(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per problem, naming the dotted key; an unknown key gets the closest valid one."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "(top level)"
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            message = "unknown key"
            valid = _fields_at(model, list(e["loc"][:-1]))
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            if close:
                message += f" (did you mean {prefix}{'.'.join([*loc[:-1], close[0]])}?)"
        lines.append(f"{key}: {message}")
    return lines


def _fields_at(model: type[BaseModel], loc: list[int | str]) -> list[str]:
    """The keys valid at ``loc`` inside ``model`` (list indexes skipped); [] past a free-form
    mapping."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The model class an annotation holds, through ``list[...]`` and ``... | None``."""
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _describe(err: ValidationError, source: str) -> str:
    return "\n".join(f"{source}: {line}" for line in describe_errors(err, Config))


def find_config(
    path: Path | None,
    environ: Mapping[str, str],
    base: Path,
    system: Path = SYSTEM_CONFIG_PATH,
) -> tuple[Path | None, str]:
    """The YAML file to read and how it was found: ``path`` (``--config``), else
    ``DRISHTIKSHA_CONFIG``, else ``system``, else ``configs/default.yaml`` under ``base``;
    (None, "embedded defaults") when there is none. A file named explicitly must exist."""
    named = [
        (path, "--config"),
        (environ.get(ENV_PREFIX + "CONFIG") or None, ENV_PREFIX + "CONFIG"),
    ]
    for candidate, how in named:
        if candidate is not None:
            if not Path(candidate).exists():
                raise ConfigError(f"configuration file {candidate} ({how}) does not exist")
            return Path(candidate), how
    for candidate in (system, base / DEFAULT_CONFIG_PATH):
        if candidate.exists():
            return candidate, "found"
    return None, EMBEDDED


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    base: Path | None = None,
    system: Path = SYSTEM_CONFIG_PATH,
) -> Config:
    """Find (``find_config``), merge and validate the configuration; raises ConfigError naming
    the bad key."""
    environ = os.environ if environ is None else environ
    base = base or Path.cwd()
    found, how = find_config(path, environ, base, system)
    raw: dict[str, Any] = {}
    source = EMBEDDED
    if found is not None:
        source = str(found.absolute()) + ("" if how == "found" else f" ({how})")
        try:
            loaded = yaml.safe_load(found.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{found}: cannot read it as YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{found}: the top level must be a mapping of settings")
        raw = loaded
    env = _env_overrides(environ)
    if env:
        source += " + DRISHTIKSHA_* environment"
    try:
        config = Config.model_validate(_merge(raw, env))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    resolved = config.resolved(base)
    resolved._source = source
    return resolved
