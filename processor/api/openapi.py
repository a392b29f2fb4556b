"""The OpenAPI 3.1 description of every endpoint, written by hand to match the handlers."""

from __future__ import annotations

import re
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from detectors.base import Label
from processor.documents import DOCUMENTS
from storage.models import REVIEW_DECISIONS
from storage.queue import JobState

JSON = "application/json"
_REF = "#/components/schemas/"

_SECURED: list[dict[str, list[str]]] = [{"ApiKey": []}]
# Open unless the operator sets health_requires_key / metrics_requires_key.
_OPTIONAL_KEY: list[dict[str, list[str]]] = [{}, {"ApiKey": []}]

_ERROR_TEXT = {
    400: "Bad request: a parameter or the body is invalid.",
    401: "No API key, or an unknown one.",
    403: "The key lacks the scope this endpoint needs.",
    404: "Not found.",
    408: "The upload stalled (sent nothing for upload_idle_timeout_s), averaged less than "
    "upload_min_bytes_per_s, or took longer than upload_deadline_s.",
    409: "Conflict with the state of the job (or webhook delivery), or a job id prefix that "
    "several jobs share.",
    413: "The upload is larger than max_upload_bytes.",
    415: "The body is not a video container (checked by probing the bytes).",
    422: "A video that cannot be judged (corrupt, over a limit), or an unknown model.",
    503: "Busy (too many uploads) or the database is unavailable; see Retry-After.",
    504: "The analysis did not finish within request_timeout_s; it goes on as a job.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _seed(properties: dict[str, Any]) -> dict[str, Any]:
    """An older-service response: every field required but the dummy-weights warning."""
    return _obj(properties, required=[k for k in properties if k != "warning"])


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time"}
_STRS = {"type": "array", "items": _STR}
# The older service only ever answered one of these two.
_DECIDED = {"type": "string", "enum": [Label.REAL.value, Label.FAKE.value]}
_REQUEST_ID_HEADER = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}


def _response(description: str, schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID_HEADER,
        "content": {media: {"schema": schema}},
    }


def _errors(*statuses: int, seed: bool = False) -> dict[str, Any]:
    schema = _ref("SeedError" if seed else "Error")
    return {str(s): _response(_ERROR_TEXT[s], schema) for s in statuses}


def _path_param(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_JOB_ID = _path_param(
    "job_id",
    "^[0-9a-fA-F]{8,32}$",
    "Job id: 32 hex characters, or a unique start of 8 or more (409 if several jobs share it).",
)
_VIDEO_BODY = {
    "required": True,
    "description": "The video: a multipart form with a file field `video` (as the older "
    "service took it), or the bytes themselves as video/* or application/octet-stream. "
    "Checked by probing the content, never by the name or the declared type.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"video": {"type": "string", "format": "binary"}},
                "required": ["video"],
                # Other fields are accepted and read past, as the older service's clients may
                # send them: with plain names, at most api.max_form_parts (8 by default) of
                # them beside the video, each within api.max_form_field_bytes.
                "additionalProperties": {"type": "string", "maxLength": 65536},
                "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "maxProperties": 9,
            },
            "encoding": {"video": {"contentType": "video/*, application/octet-stream"}},
        },
        # An empty body is no video (400).
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary", "minLength": 1}
        },
        "video/mp4": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
    },
}
_ANNOTATED_VIDEO = {
    "description": "The annotated video (H.264 MP4), as an attachment.",
    "headers": {
        **_REQUEST_ID_HEADER,
        "Content-Disposition": {"schema": _STR},
    },
    "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
}


def _model(detector_keys: list[str]) -> dict[str, Any]:
    return _query(
        "model",
        {"type": "string", "enum": ["", *detector_keys]},
        "Detector key; default (absent or empty): the api.default_model setting.",
    )


def _any_case(word: str) -> str:
    """A regular expression for ``word`` in any letter case (JSON Schema has no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


def _document_schemas() -> dict[str, Any]:
    """The component schemas of the documents the handlers build from ``processor.documents``,
    generated from those models (each one's nested models become components too)."""
    _, schema = models_json_schema(
        [(model, "serialization") for model in DOCUMENTS],
        ref_template=_REF + "{model}",
        schema_generator=_UntitledFields,
    )
    return dict(schema["$defs"])


class _UntitledFields(GenerateJsonSchema):
    """Pydantic titles every property after its name ("Fake Probability"), which only
    repeats the key in the rendered documentation."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _schemas() -> dict[str, Any]:
    seed_quick = {
        "prediction": _DECIDED,
        "confidence": {**_NUM, "description": "Confidence in the prediction."},
        "processing_time": {**_NUM, "description": "Seconds the daemon spent on the job."},
        "model": _STR,
        "timestamp": _STR,
        "weights": {**_STR, "description": "sha256 of the weights that judged, or dummy."},
        "warning": {
            **_STR,
            "description": "Present when the weights are dummy (random) or measured no better "
            "than chance on held-out clips.",
        },
    }
    detector_info = _obj(
        {
            "key": _STR,
            "version": _nullable(_STR),
            "configured": _BOOL,
            "loaded": _BOOL,
            "weights": _nullable(_STR),
            "dummy_weights": _nullable(_BOOL),
            "device": _nullable(_STR),
            "num_frames": _nullable(_INT),
            "reason": {**_nullable(_STR), "description": "Why it is not loaded here."},
        }
    )
    return {
        **_document_schemas(),
        "Error": _obj(
            {
                "error": _obj(
                    {"code": _STR, "message": _STR, "request_id": _STR},
                )
            }
        ),
        "SeedError": _obj(
            {
                "error": _STR,
                "message": _STR,
                "code": _STR,
                "suggestions": _STRS,
                "timestamp": _STR,
                "request_id": _STR,
                "available_models": _STRS,
                "job_id": _STR,
            },
            required=["error", "message", "code", "suggestions", "timestamp", "request_id"],
        ),
        "Reviews": _obj(
            {
                "job_id": _STR,
                "review": {**_nullable(_ref("Review")), "description": "The current review."},
                "history": {
                    "type": "array",
                    "items": _ref("Review"),
                    "description": "Every review of the job, newest (the current one) first.",
                },
            }
        ),
        "ReviewRequest": _obj(
            {
                "decision": {"type": "string", "enum": list(REVIEW_DECISIONS)},
                "note": {"type": "string", "maxLength": 4000},
            },
            required=["decision"],
        ),
        "DetectorInfo": detector_info,
        **_webhook_schemas(),
        "Detectors": _obj(
            {
                "device": _nullable(_STR),
                "default": _STRS,
                "detectors": {"type": "array", "items": _ref("DetectorInfo")},
            }
        ),
        "Health": _obj(
            {
                "service": _STR,
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "ready": _BOOL,
                "version": _STR,
                "timestamp": _STR,
                "available_models": _STRS,
                "default_model": _STR,
            }
        ),
        "Status": _obj(
            {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "ready": _BOOL,
                "service": _STR,
                "version": _STR,
                "timestamp": _STR,
                "uptime_s": _NUM,
                "database": _STR,
                "jobs": {"type": "object", "additionalProperties": _INT},
                "worker": _nullable(
                    _obj(
                        {
                            "id": _STR,
                            "alive": _BOOL,
                            "held_jobs": _INT,
                            "batches_run": _INT,
                            "problem": _nullable(_STR),
                        }
                    )
                ),
                "workers": {
                    "type": "array",
                    "items": _obj(
                        {
                            "id": _STR,
                            "host": _STR,
                            "alive": _BOOL,
                            "held_jobs": _INT,
                            "device": _nullable(_STR),
                            "detectors": _STRS,
                        }
                    ),
                },
                "stranded": {
                    "type": "array",
                    "items": _obj({"detectors": _STRS, "queued": _INT}),
                },
                "detectors": {
                    "type": "object",
                    "additionalProperties": _obj(
                        {
                            "loaded": _BOOL,
                            "version": _nullable(_STR),
                            "weights": _nullable(_STR),
                            "reason": _nullable(_STR),
                        }
                    ),
                },
                "available_models": _STRS,
                "default_model": _STR,
            },
            required=["status", "ready", "database", "worker", "detectors", "available_models"],
        ),
        "ServiceInfo": _obj(
            {
                "service": _STR,
                "message": _STR,
                "status": _STR,
                "version": _STR,
                "available_models": _STRS,
                "default_model": _STR,
                "docs": _STR,
                "openapi": _STR,
                "timestamp": _STR,
            }
        ),
        "SeedQuick": _seed(seed_quick),
        "SeedDetailed": _seed(
            {
                **seed_quick,
                "analysis_details": _obj(
                    {
                        "frame_count": _INT,
                        "avg_confidence": _NUM,
                        "confidence_std": _NUM,
                        "temporal_consistency": _NUM,
                        "rolling_average": _NUM,
                    }
                ),
                "model_info": _obj({"version": _STR, "architecture": _STR, "device": _STR}),
                "system_info": _obj({"gpu_memory_used": _STR, "processing_device": _STR}),
            }
        ),
        "SeedFrames": _seed(
            {
                **seed_quick,
                "frame_predictions": {
                    "type": "array",
                    "items": _obj(
                        {
                            "frame": _INT,
                            "confidence": _NUM,
                            "prediction": _DECIDED,
                        }
                    ),
                },
                "temporal_analysis": _obj(
                    {
                        "consistency_score": _NUM,
                        "pattern_detection": _STR,
                        "anomaly_frames": {"type": "array", "items": _INT},
                        "confidence_trend": _STR,
                    }
                ),
                "summary": _obj(
                    {
                        "total_frames": _INT,
                        "fake_frames": _INT,
                        "real_frames": _INT,
                        "avg_confidence": _NUM,
                    }
                ),
            }
        ),
    }


def _seed_analysis(summary: str, schema: str, detector_keys: list[str]) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["older service"],
            "summary": summary,
            "description": "Queued at api.analyze_priority; answers when the job is done.",
            "security": _SECURED,
            "parameters": [_model(detector_keys)],
            "requestBody": _VIDEO_BODY,
            "responses": {
                "200": _response("The analysis.", _ref(schema)),
                **_errors(400, 401, 403, 408, 409, 413, 415, 422, 503, 504, seed=True),
            },
        }
    }


_DELIVERY_ID = {
    "name": "delivery_id",
    "in": "path",
    "required": True,
    "description": "Webhook delivery id (the X-Drishtiksha-Delivery header of each attempt).",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
}
_DELIVERY_STATES = ("pending", "dead", "delivered")


def _webhook_schemas() -> dict[str, Any]:
    delivery = {
        "id": _INT,
        "job_id": _STR,
        "event": {**_STR, "description": "job.done, job.failed, job.cancelled or job.reviewed."},
        "url": {
            **_STR,
            "description": "The receiver: the whole URL for admin keys (and with no keys "
            "configured), else only its scheme and host.",
        },
        "state": {
            "type": "string",
            "enum": list(_DELIVERY_STATES),
            "description": "pending: to be tried (again) at next_attempt_at; delivered: a "
            "receiver answered 2xx; dead: failed for the whole webhooks.retry_for_s and "
            "parked until it is sent again by hand.",
        },
        "attempts": {**_INT, "description": "Attempts recorded, re-sends included."},
        "last_status": _nullable(_INT),
        "last_error": _nullable(_STR),
        "created_at": _TIME,
        "next_attempt_at": _nullable(_TIME),
        "delivered_at": _nullable(_TIME),
        "dead_at": _nullable(_TIME),
    }
    attempt = _obj(
        {
            "at": _TIME,
            "status": {**_nullable(_INT), "description": "The receiver's HTTP status."},
            "error": {**_nullable(_STR), "description": "Why it failed; null when accepted."},
            "elapsed_s": _NUM,
        }
    )
    return {
        "WebhookDelivery": _obj(delivery),
        "WebhookDeliveryDetail": _obj(
            {
                **delivery,
                "history": {
                    "type": "array",
                    "items": attempt,
                    "description": "Every attempt, oldest first.",
                },
            }
        ),
        "WebhookDeliveryList": _obj(
            {
                "deliveries": {"type": "array", "items": _ref("WebhookDelivery")},
                "next": {
                    **_nullable(_INT),
                    "description": "Cursor for the next page (pass as before), or null.",
                },
            }
        ),
    }


def _webhook_paths() -> dict[str, Any]:
    return {
        "/v1/webhooks/deliveries": {
            "get": {
                "tags": ["webhooks"],
                "summary": "Webhook deliveries, newest first",
                "security": _SECURED,
                "parameters": [
                    _query(
                        "state",
                        {"type": "string", "enum": list(_DELIVERY_STATES)},
                        "Only deliveries in this state.",
                    ),
                    _query(
                        "job",
                        {"type": "string", "pattern": "^[0-9a-fA-F]{8,32}$"},
                        "Only the deliveries of this job (its id, or a unique start of 8+).",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        "Page size.",
                    ),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                        "Cursor: the next field of the previous page.",
                    ),
                ],
                "responses": {
                    "200": _response("A page of deliveries.", _ref("WebhookDeliveryList")),
                    **_errors(400, 401, 403, 409, 503),
                },
            }
        },
        "/v1/webhooks/deliveries/{delivery_id}": {
            "parameters": [_DELIVERY_ID],
            "get": {
                "tags": ["webhooks"],
                "summary": "One webhook delivery with every attempt",
                "security": _SECURED,
                "responses": {
                    "200": _response("The delivery.", _ref("WebhookDeliveryDetail")),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/webhooks/deliveries/{delivery_id}/retry": {
            "parameters": [_DELIVERY_ID],
            "post": {
                "tags": ["webhooks"],
                "summary": "Send a dead delivery again",
                "description": "Due now, with a new retry period (webhooks.retry_for_s) "
                "starting now; a dispatcher in any running process sends it. Needs an admin "
                "key. 409 not_dead for a delivery that is pending or delivered.",
                "security": _SECURED,
                "responses": {
                    "200": _response("The delivery, pending again.", _ref("WebhookDeliveryDetail")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
    }


def _paths(detector_keys: list[str], request_timeout_s: float) -> dict[str, Any]:
    key = "(" + "|".join(re.escape(k) for k in detector_keys) + ")"
    detector_key = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
    list_params = [
        _query(
            "state",
            {"type": "string", "enum": [s.value for s in JobState]},
            "Only jobs in this state.",
        ),
        _query(
            "label",
            {
                "type": "string",
                "pattern": "^(" + "|".join(_any_case(label) for label in Label) + ")$",
            },
            "Only done jobs whose overall verdict has this label (REAL, FAKE, UNCERTAIN or "
            "ABSTAIN, in any letter case).",
        ),
        _query("detector", detector_key, "Only jobs submitted for this detector."),
        _query(
            "source_kind",
            {"type": "string", "pattern": "^[a-z0-9_]{1,16}$"},
            "Only jobs from this source (folder, upload...).",
        ),
        _query("since", _TIME, "Only jobs created at or after this time."),
        _query("until", _TIME, "Only jobs created before this time."),
        _query(
            "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size."
        ),
        _query(
            "before",
            {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "Cursor: the next field of the previous page.",
        ),
    ]
    return {
        "/": {
            "get": {
                "tags": ["older service"],
                "summary": "Service information and available models",
                "security": _OPTIONAL_KEY,
                "responses": {
                    "200": _response("Service information.", _ref("ServiceInfo")),
                    **_errors(401, 403),
                },
            }
        },
        "/health": {
            "get": {
                "tags": ["operations"],
                "summary": "Liveness and readiness",
                "description": "200 when ready: the database answers and, where this process "
                "runs a worker, its loops are alive and every detector is loaded. Says nothing "
                "more (it needs no key); the reasons are in GET /v1/status.",
                "security": _OPTIONAL_KEY,
                "responses": {
                    "200": _response("Ready.", _ref("Health")),
                    "503": _response("Not ready.", _ref("Health")),
                    **_errors(401, 403),
                },
            }
        },
        "/v1/status": {
            "get": {
                "tags": ["operations"],
                "summary": "Detailed status",
                "description": "Readiness with its reasons: the database and its job counts, "
                "this process's worker, every worker sharing the database and how many jobs "
                "each holds, and each detector's version, weights and load state.",
                "security": _SECURED,
                "responses": {
                    "200": _response("The status.", _ref("Status")),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "security": _OPTIONAL_KEY,
                "responses": {
                    "200": _response("Text exposition format.", _STR, "text/plain"),
                    **_errors(401, 403),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["operations"],
                "summary": "This document",
                "security": [{}],
                "responses": {"200": _response("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/docs": {
            "get": {
                "tags": ["operations"],
                "summary": "Interactive documentation (Swagger UI)",
                "security": [{}],
                "responses": {"200": _response("HTML page.", _STR, "text/html")},
            }
        },
        "/redoc": {
            "get": {
                "tags": ["operations"],
                "summary": "Reference documentation (ReDoc)",
                "security": [{}],
                "responses": {"200": _response("HTML page.", _STR, "text/html")},
            }
        },
        "/analyze": _seed_analysis("Quick analysis", "SeedQuick", detector_keys),
        "/analyze/detailed": _seed_analysis("Detailed analysis", "SeedDetailed", detector_keys),
        "/analyze/frames": _seed_analysis("Frame-by-frame analysis", "SeedFrames", detector_keys),
        "/analyze/visualize": {
            "post": {
                "tags": ["older service"],
                "summary": "Annotated video",
                "description": "Queued at api.analyze_priority; when the job is done, the video "
                "comes back as an H.264 MP4 (downscaled to decode.max_side) with the model's "
                "face box, per-frame score bar and verdict drawn on every frame. Also kept for "
                "GET /v1/jobs/{job_id}/visualization.",
                "security": _SECURED,
                "parameters": [_model(detector_keys)],
                "requestBody": _VIDEO_BODY,
                "responses": {
                    "200": _ANNOTATED_VIDEO,
                    **_errors(400, 401, 403, 408, 409, 413, 415, 422, 503, 504, seed=True),
                },
            }
        },
        "/v1/jobs": {
            "post": {
                "tags": ["jobs"],
                "summary": "Upload a video and queue a job",
                "security": _SECURED,
                "parameters": [
                    _query(
                        "detectors",
                        {"type": "string", "pattern": f"^{key}(,{key})*$"},
                        "Comma-separated detector keys; default (absent): the first inbox's.",
                    ),
                    _query(
                        "priority",
                        {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000},
                        "Higher runs first (default 0).",
                    ),
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": request_timeout_s},
                        "Answer when the job is done or after this many seconds, whichever "
                        "comes first (at most request_timeout_s).",
                    ),
                    _query("filename", {"type": "string"}, "The video's name for a raw body."),
                ],
                "requestBody": _VIDEO_BODY,
                "responses": {
                    "200": _response(
                        "These bytes were already judged by the same detectors, versions and "
                        "weights: the stored verdict, and no new job.",
                        _ref("CachedVerdict"),
                    ),
                    "201": {
                        **_response(
                            "The job (done already with ?wait= if it finished).", _ref("Job")
                        ),
                        "headers": {**_REQUEST_ID_HEADER, "Location": {"schema": _STR}},
                    },
                    **_errors(400, 401, 403, 408, 413, 415, 422, 503),
                },
            },
            "get": {
                "tags": ["jobs"],
                "summary": "List jobs, newest first",
                "security": _SECURED,
                "parameters": list_params,
                "responses": {
                    "200": _response("A page of jobs.", _ref("JobList")),
                    **_errors(400, 401, 403, 503),
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "tags": ["jobs"],
                "summary": "One job with its results",
                "security": _SECURED,
                "responses": {
                    "200": _response("The job.", _ref("Job")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
            "delete": {
                "tags": ["jobs"],
                "summary": "Cancel a queued job",
                "security": _SECURED,
                "responses": {
                    "200": _response("The cancelled job.", _ref("Job")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/retry": {
            "parameters": [_JOB_ID],
            "post": {
                "tags": ["jobs"],
                "summary": "Run a failed or cancelled job again",
                "description": "Back to queued with its attempts reset; a folder job's file "
                "comes back from failed/ into the work area (its .error.json removed). 409 "
                "with code not_retryable (the job is not failed or cancelled), not_finalized "
                "(its file is still being moved) or file_gone (an upload's copy, an S3 "
                "download or a moved file no longer exists).",
                "security": _SECURED,
                "responses": {
                    "200": _response("The job, queued again.", _ref("Job")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/review": {
            "parameters": [_JOB_ID],
            "get": {
                "tags": ["reviews"],
                "summary": "A person's review of the job, with every earlier one",
                "security": _SECURED,
                "responses": {
                    "200": _response(
                        "The current review (or null) and the history.", _ref("Reviews")
                    ),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
            "put": {
                "tags": ["reviews"],
                "summary": "Record a person's judgement: confirmed fake, confirmed real or a "
                "second look",
                "description": "Recorded under the key's name (anonymous with no keys "
                "configured). A review is never overwritten: the new one becomes current and "
                "the earlier ones stay in the history. Webhook receivers that list the "
                "reviewed event get a job.reviewed delivery.",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("ReviewRequest")}},
                },
                "responses": {
                    "200": _response("The reviews, the new one current.", _ref("Reviews")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/reviews.csv": {
            "get": {
                "tags": ["reviews"],
                "summary": "Jobs people confirmed fake or real, as CSV to retrain on",
                "description": "One row per job whose current review is confirmed_fake or "
                "confirmed_real: file (its name in done/), label (FAKE or REAL, the person's), "
                "sha256, job_id, source_kind, source, machine_label, "
                "machine_fake_probability, decision, note, reviewer, reviewed_at. Placed in "
                "done/, it is a labels file for drishtiksha train --data.",
                "security": _SECURED,
                "responses": {
                    "200": _response("The CSV.", _STR, media="text/csv"),
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/v1/jobs/{job_id}/frames": {
            "parameters": [_JOB_ID],
            "get": {
                "tags": ["jobs"],
                "summary": "Per-frame fake probabilities of each detector",
                "security": _SECURED,
                "responses": {
                    "200": _response("Frame scores (t: seconds, p: probability).", _ref("Frames")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/visualization": {
            "parameters": [_JOB_ID],
            "get": {
                "tags": ["jobs"],
                "summary": "Annotated video of one detector's result",
                "description": "Rendered from the job's video while the server still has it "
                "(a folder job's file in done/), then kept (the oldest renderings are deleted "
                "past api.artefacts_max_files or api.artefacts_max_bytes); an upload's copy is "
                "deleted once judged, so an upload job has one only if POST /analyze/visualize "
                "made it. Fetching a kept rendering needs the read scope, rendering one the "
                "submit scope (403 otherwise).",
                "security": _SECURED,
                "parameters": [
                    _query("detector", detector_key, "Detector key; default: the job's first.")
                ],
                "responses": {
                    "200": _ANNOTATED_VIDEO,
                    **_errors(400, 401, 403, 404, 409, 422, 503),
                },
            },
        },
        "/v1/videos/{sha256}": {
            "parameters": [
                _path_param(
                    "sha256",
                    "^[0-9a-fA-F]{12,64}$",
                    "sha256 of the video's bytes, or a unique start of 12 or more hex "
                    "characters (409 if several videos share it).",
                )
            ],
            "get": {
                "tags": ["videos"],
                "summary": "Have we seen these exact bytes, and what did we say?",
                "security": _SECURED,
                "responses": {
                    "200": _response("The video and every job for it.", _ref("Video")),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/detectors": {
            "get": {
                "tags": ["detectors"],
                "summary": "Known detectors, their versions and weights, loaded or why not",
                "security": _SECURED,
                "responses": {
                    "200": _response("The detectors.", _ref("Detectors")),
                    **_errors(400, 401, 403),
                },
            }
        },
        **_webhook_paths(),
    }


def query_parameters() -> dict[tuple[str, str], frozenset[str]]:
    """(method, path) -> the names of the query parameters the operation takes."""
    taken: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in _paths(["any"], 1.0).items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method != "parameters":
                params = [*shared, *op.get("parameters", [])]
                names = frozenset(p["name"] for p in params if p["in"] == "query")
                taken[(method.upper(), path)] = names
    return taken


def document(version: str, detector_keys: list[str], request_timeout_s: float) -> dict[str, Any]:
    """The OpenAPI 3.1 document, for a server whose workers load ``detector_keys``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Drishtiksha",
            "version": version,
            "description": "Deepfake-detection daemon: upload videos or drop them in an inbox, "
            "read the verdicts. Errors have one shape, {error: {code, message, request_id}}, "
            "except on the older service's /analyze endpoints, which keep theirs.",
        },
        "servers": [{"url": "/"}],
        "paths": _paths(detector_keys, request_timeout_s),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "headers": {
                "RequestId": {
                    "description": "The request's id (the client's X-Request-ID if it sent "
                    "a valid one); also in every error body.",
                    "required": True,
                    "schema": _STR,
                }
            },
        },
    }
