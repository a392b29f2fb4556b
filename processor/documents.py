"""The documents Drishtiksha emits, one model each: the API's jobs, results, verdicts, frame
scores and videos, the .verdict.json and .error.json sidecars and the webhook event bodies.

The builders (``processor.verdict``, ``processor.api.common``, ``processor.webhooks``) fill
these models and dump them, and ``processor.api.openapi`` derives its component schemas from
them, so what is sent and what is described cannot drift apart. Fields are declared in the
order clients have always received them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from detectors.base import Label
from storage.models import REVIEW_DECISIONS
from storage.queue import JobState

SidecarSchema = Literal["drishtiksha.verdict/1"]
SCHEMA: SidecarSchema = "drishtiksha.verdict/1"
ErrorSidecarSchema = Literal["drishtiksha.error/1"]
ERROR_SCHEMA: ErrorSidecarSchema = "drishtiksha.error/1"

# The API and webhooks give times as ISO 8601 (``datetime.isoformat``).
IsoTime = Annotated[
    dt.datetime,
    PlainSerializer(dt.datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
# The sidecar has always written times as Python's ``str`` of an aware datetime ("2025-01-02
# 03:04:05.678901+00:00": a space, not a T), which is not what JSON Schema's date-time means.
SidecarTime = Annotated[
    dt.datetime,
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "ISO 8601 with a space between date and time, in UTC.",
        }
    ),
]

# A review's time, already written as ISO 8601 in UTC with a Z by the API.
ZTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def _absent(value: object) -> bool:
    return value is None


def _open(schema: dict[str, Any]) -> None:
    # A model refuses fields it does not declare, so a builder cannot slip one in; but clients
    # are promised they may ignore keys they do not know, so later releases can add some: the
    # published schema leaves the objects open.
    schema.pop("additionalProperties", None)


class Document(BaseModel):
    """What every emitted document shares: immutable, no field it does not declare, labels
    and states dumped as their plain strings."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_enum_values=True, json_schema_extra=_open
    )

    def dump(self) -> dict[str, Any]:
        """The document as the JSON object clients receive (times already as text)."""
        return self.model_dump(by_alias=True)


class FrameScore(Document):
    t: float = Field(description="Seconds into the video.")
    p: float = Field(description="Fake probability of the frame (or window) there.")


class Result(Document):
    """One detector's result on one video."""

    detector: str
    version: str
    weights: str = Field(description="sha256 of the weights file, or dummy.")
    label: Label
    fake_probability: float | None
    threshold: float
    elapsed_s: float
    cached_from_job: str | None
    details: dict[str, Any]
    frame_scores: list[FrameScore]


class Verdict(Document):
    """The detectors' results fused into one verdict, as stored when the job finished."""

    label: Label
    fake_probability: float | None
    rule: str = Field(
        description="any_fake: FAKE if any detector says FAKE; weighted_mean: the weighted "
        "mean of the detectors' fake probabilities."
    )
    decided_by: str | None = Field(
        None,
        exclude_if=_absent,
        description="Present when one detector's result decided the verdict (a signed "
        "declaration of generative AI).",
    )
    reason: str | None = Field(
        None, exclude_if=_absent, description="Why it decided; present with decided_by."
    )
    explanation: str = Field(description="The verdict in plain words.")


class Source(Document):
    kind: str = Field(description="folder, upload, s3 or cli.")
    ref: str


class JobSource(Source):
    inbox: str | None


class JobError(Document):
    code: str
    message: str | None


class Job(Document):
    id: str
    state: JobState
    sha256: str
    source: JobSource
    detectors: list[str]
    priority: int
    attempts: int
    cached: bool
    error: JobError | None
    output_path: str | None = Field(
        description="Where a folder job's file went (done/ or failed/): the full path for "
        "admin keys (and with no keys configured), else the file name."
    )
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None
    verdict: Verdict | None
    results: list[Result]


class JobList(Document):
    """A page of jobs, newest first."""

    jobs: list[Job]
    next: str | None = Field(description="Cursor for the next page (pass as before), or null.")


class CachedVerdict(Document):
    """The stored verdict on bytes already judged by the same detectors, versions and weights."""

    cached: Literal[True]
    sha256: str
    detectors: list[str]
    verdict: Verdict
    results: list[Result]


class VideoFacts(Document):
    """What the decoder learnt about a video."""

    sha256: str
    size_bytes: int
    container: str | None
    codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    duration_s: float | None


class Video(VideoFacts):
    """A video the server has seen, with every job for it."""

    first_seen: IsoTime
    jobs: list[Job]


class DetectorFrames(Document):
    detector: str
    version: str
    weights: str
    label: Label
    fake_probability: float | None
    threshold: float
    frames: list[FrameScore]


class Frames(Document):
    """Each detector's per-frame fake probabilities for one job."""

    job_id: str
    state: JobState
    detectors: list[DetectorFrames]


class SidecarTimes(Document):
    created: SidecarTime
    started: SidecarTime | None
    finished: SidecarTime | None


class VerdictSidecar(Document):
    """The .verdict.json written beside a done job's file (and to the object store)."""

    # "schema" would shadow a BaseModel attribute: the field is named so only in the JSON.
    schema_: SidecarSchema = Field(alias="schema")
    file: str
    source: Source
    sha256: str
    job_id: str
    cached: bool
    verdict: Verdict | None
    detectors: list[Result]
    video: VideoFacts | None
    timestamps: SidecarTimes
    warning: str | None = Field(
        None,
        exclude_if=_absent,
        description="Present when the weights are dummy (random) or measured no better than "
        "chance on held-out clips.",
    )


class ErrorSidecar(Document):
    """The .error.json written beside a failed or cancelled job's file, or beside an inbox file
    refused before any job was made for it (then with no job, hash or attempts)."""

    schema_: ErrorSidecarSchema = Field(alias="schema")
    file: str
    source: Source
    sha256: str | None
    job_id: str | None
    state: JobState
    error: JobError
    attempts: int
    timestamps: SidecarTimes


class WebhookEvent(Document):
    """The body POSTed to a webhook receiver when a job ends."""

    event: Literal["job.done", "job.failed", "job.cancelled"]
    job_id: str
    state: JobState
    sha256: str
    source: Source
    verdict: Verdict | None
    error: JobError | None
    finished_at: IsoTime | None


class Review(Document):
    """A person's judgement of a job."""

    decision: str = Field(json_schema_extra={"enum": list(REVIEW_DECISIONS)})
    note: str
    by: str = Field(description="The API key's name, or anonymous.")
    at: ZTime


class ReviewEvent(Document):
    """The body POSTed to a webhook receiver of ``reviewed`` events when a person reviews a
    job: the machine's verdict beside the person's review."""

    event: Literal["job.reviewed"]
    job_id: str
    state: JobState
    sha256: str
    source: Source
    verdict: Verdict | None
    review: Review


# Every model above that is a whole document (the rest appear inside them), for the OpenAPI
# components and the tests.
DOCUMENTS: tuple[type[Document], ...] = (
    Result,
    Verdict,
    Job,
    JobList,
    CachedVerdict,
    Video,
    Frames,
    VerdictSidecar,
    ErrorSidecar,
    WebhookEvent,
    ReviewEvent,
)
