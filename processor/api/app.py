"""The HTTP API: the native ``/v1`` job API, the older service's endpoints, health, metrics
and the OpenAPI document with its interactive docs.

One middleware frames every request: it gives it an id (``X-Request-ID``), checks the API key
against the route's scope, turns every error (the router's 404 and 405 included) into one JSON
shape, and counts the request for ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from importlib import metadata
from typing import Any, Literal

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy import Engine

from processor import desk
from processor.api import docs as api_docs
from processor.api import native as api_native
from processor.api import reviews as api_reviews
from processor.api import seed as api_seed
from processor.api import webhooks as api_webhooks
from processor.api.auth import HEADER, Keyring
from processor.api.common import (
    PRINCIPAL,
    STATE,
    ApiError,
    ApiState,
    io,
    job_document,
    now_iso,
)
from processor.api.metrics import ApiMetrics
from processor.api.openapi import query_parameters
from processor.api.uploads import sweep
from processor.blobs import open_blobs
from processor.config import ApiConfig, Config, ConfigError, Scope
from processor.lifecycle import Lifecycle
from processor.worker import Worker
from storage.errors import StorageError
from storage.queue import JobQueue

__all__ = ["init_app", "job_document", "runner"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# None: open to all; "health"/"metrics": open unless the matching *_requires_key flag is set.
Access = Literal["read", "submit", "admin", "health", "metrics"] | None

ACCESS: web.AppKey[dict[Any, Access]] = web.AppKey("drishtiksha_access")
# (method, route) -> the query parameters it takes.
QUERY: web.AppKey[dict[tuple[str, str], frozenset[str]]] = web.AppKey("drishtiksha_query")
# The status nginx gives a request whose client went away before the answer: not the
# server's error, so not a 5xx in /metrics.
CLIENT_CLOSED = 499

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SEED_PREFIX = "/analyze"

ROUTES: list[tuple[str, str, Handler, Access]] = [
    ("GET", "/", api_seed.service_info, "health"),
    ("GET", "/health", api_native.health, "health"),
    ("GET", "/v1/status", api_native.status, "read"),
    ("GET", "/metrics", api_native.metrics, "metrics"),
    ("GET", "/openapi.json", api_docs.openapi_json, None),
    ("GET", "/docs", api_docs.docs_page, None),
    ("GET", "/docs/init.js", api_docs.docs_init, None),
    ("GET", "/redoc", api_docs.redoc_page, None),
    ("POST", "/analyze", api_seed.analyze, "submit"),
    ("POST", "/analyze/detailed", api_seed.analyze_detailed, "submit"),
    ("POST", "/analyze/frames", api_seed.analyze_frames, "submit"),
    ("POST", "/analyze/visualize", api_seed.analyze_visualize, "submit"),
    ("POST", "/v1/jobs", api_native.submit_job, "submit"),
    ("GET", "/v1/jobs", api_native.list_jobs, "read"),
    ("GET", "/v1/jobs/{job_id}", api_native.get_job, "read"),
    ("DELETE", "/v1/jobs/{job_id}", api_native.cancel_job, "submit"),
    ("POST", "/v1/jobs/{job_id}/retry", api_native.retry_job, "submit"),
    ("GET", "/v1/jobs/{job_id}/frames", api_native.job_frames, "read"),
    ("GET", "/v1/jobs/{job_id}/review", api_reviews.get_review, "read"),
    ("PUT", "/v1/jobs/{job_id}/review", api_reviews.put_review, "submit"),
    ("GET", "/v1/reviews.csv", api_reviews.reviews_csv, "read"),
    ("GET", "/v1/jobs/{job_id}/visualization", api_native.job_visualization, "read"),
    ("GET", "/v1/videos/{sha256}", api_native.get_video, "read"),
    ("GET", "/v1/detectors", api_native.list_detectors, "read"),
    ("GET", "/v1/webhooks/deliveries", api_webhooks.list_deliveries, "read"),
    ("GET", "/v1/webhooks/deliveries/{delivery_id}", api_webhooks.get_delivery, "read"),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/retry", api_webhooks.retry_delivery, "admin"),
]


def _scope(state: ApiState, access: Access) -> Scope | None:
    if access == "health":
        return "read" if state.config.api.health_requires_key else None
    if access == "metrics":
        return "read" if state.config.api.metrics_requires_key else None
    return access


def _authorize(request: web.Request, state: ApiState, access: Access) -> None:
    scope = _scope(state, access)
    if state.keyring.open:
        return
    if scope is None:
        # Open routes still note a valid key: uploads count against it, not the address.
        principal = state.keyring.identify(request.headers.get(HEADER))
        if principal is not None:
            request[PRINCIPAL] = principal
        return
    principal = state.keyring.identify(request.headers.get(HEADER))
    if principal is None:
        missing = HEADER not in request.headers
        raise ApiError(
            401,
            "missing_api_key" if missing else "invalid_api_key",
            f"send a valid API key in the {HEADER} header"
            if missing
            else f"the {HEADER} header does not hold a valid API key",
            headers={"WWW-Authenticate": f'ApiKey header="{HEADER}"'},
            title="Unauthorized",
        )
    if not principal.may(scope):
        raise ApiError(
            403,
            "insufficient_scope",
            f"the key '{principal.name}' lacks the '{scope}' scope this endpoint needs",
            title="Forbidden",
        )
    request[PRINCIPAL] = principal


def _check_query(request: web.Request, allowed: dict[tuple[str, str], frozenset[str]]) -> None:
    """Refuse query parameters the route does not take (those the OpenAPI document lists), so
    a misspelt filter is an error instead of being ignored. Only the native /v1 routes: the
    older service's clients and health checkers may add their own."""
    route = request.match_info.route.resource
    if route is None or not route.canonical.startswith("/v1/"):
        return
    known = allowed.get((request.method, route.canonical), frozenset())
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown query parameter {unknown[0]!r}; this endpoint takes "
            f"{', '.join(sorted(known)) or 'none'}",
        )


def _client_gone(request: web.Request, exc: Exception) -> bool:
    """Whether ``exc`` is the client hanging up mid-request (a broken upload included)."""
    transport = request.transport
    closed = transport is None or transport.is_closing()
    return closed and isinstance(exc, ConnectionError | HttpProcessingError | ApiError)


def error_response(request: web.Request, exc: ApiError, request_id: str) -> web.Response:
    """The error document: ``{"error": {code, message, request_id}}``, or on the older
    service's routes its own shape (error, message, suggestions, timestamp, ...)."""
    if request.path == _SEED_PREFIX or request.path.startswith(_SEED_PREFIX + "/"):
        body: dict[str, Any] = {
            "error": exc.title or _phrase(exc.status),
            "message": exc.message,
            "code": exc.code,
            "suggestions": [],
            "timestamp": now_iso(),
            "request_id": request_id,
        }
        body.update(exc.extra)
    else:
        body = {"error": {"code": exc.code, "message": exc.message, "request_id": request_id}}
        body["error"].update(exc.extra)
    return web.json_response(body, status=exc.status, headers=exc.headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    """The router's (and aiohttp's) own errors, in our terms."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return ApiError(
        exc.status,
        codes.get(exc.status, f"http_{exc.status}"),
        exc.reason if exc.status != 404 else "no such endpoint",
        headers=headers,
    )


@web.middleware
async def frame(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, access control, errors in one shape, and request metrics."""
    state = request.app[STATE]
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    start = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    response: web.StreamResponse
    try:
        access = request.app[ACCESS].get(request.match_info.handler)
        _authorize(request, state, access)
        _check_query(request, request.app[QUERY])
        response = await handler(request)
    except Exception as exc:
        if _client_gone(request, exc):
            # Counted under its own status, logged in one line: nothing failed on our side,
            # and the upload's partial file is already removed.
            log.info(
                "request %s: %s %s: the client went away (%s)",
                request_id,
                request.method,
                request.path,
                type(exc).__name__,
            )
            response = web.Response(status=CLIENT_CLOSED)
        else:
            response = _error_for(request, exc, request_id)
    response.headers["X-Request-ID"] = request_id
    state.metrics.observe_request(
        route_name, request.method, response.status, time.perf_counter() - start
    )
    return response


def _error_for(request: web.Request, exc: Exception, request_id: str) -> web.Response:
    """The error document for what a handler raised."""
    if isinstance(exc, ApiError):
        return error_response(request, exc, request_id)
    if isinstance(exc, web.HTTPException):
        return error_response(request, _from_http_exception(exc), request_id)
    if isinstance(exc, StorageError):
        log.warning("request %s: database error: %s", request_id, exc)
        response = error_response(
            request,
            ApiError(503, exc.code, "the job database is unavailable; try again shortly"),
            request_id,
        )
        response.headers["Retry-After"] = "5"
        return response
    log.error("request %s: %s %s failed", request_id, request.method, request.path, exc_info=exc)
    return error_response(
        request, ApiError(500, "internal_error", "internal error; see the server log"), request_id
    )


def init_app(
    config: Config,
    queue: JobQueue,
    engine: Engine,
    worker: Worker | None,
    *,
    environ: Mapping[str, str] | None = None,
    lifecycle: Lifecycle | None = None,
) -> web.Application:
    """The aiohttp application over an open queue; ``worker`` is this process's worker, if it
    has one, and ``lifecycle`` the process's own (one is made from ``config`` if not given).
    Raises ConfigError for an API that may not start as configured."""
    from processor.loader import decode_limits, resolve_device

    api = config.api
    detector_keys = config.all_detector_keys()
    if api.default_model not in detector_keys:
        raise ConfigError(
            f"api.default_model: {api.default_model!r} is not a detector any inbox uses "
            f"({', '.join(detector_keys)}); set api.default_model to one of them"
        )
    keyring = Keyring.from_config(api, os.environ if environ is None else environ)
    metrics = ApiMetrics(queue)
    state = ApiState(
        config=config,
        queue=queue,
        engine=engine,
        worker=worker,
        lifecycle=lifecycle
        or (
            worker.lifecycle
            if worker is not None
            else Lifecycle.from_config(config, queue, open_blobs(config.blobs))
        ),
        keyring=keyring,
        metrics=metrics,
        detector_keys=detector_keys,
        max_upload_bytes=api.max_upload_bytes or config.limits.max_file_bytes,
        limits=decode_limits(config),
        device=resolve_device(config.device) if worker is not None else None,
        version=_version(),
    )
    app = web.Application(middlewares=[frame])
    app[STATE] = state
    app[ACCESS] = {}
    app[QUERY] = query_parameters()
    for method, path, handler, access in ROUTES:
        app.router.add_route(method, path, handler)
        app[ACCESS][handler] = access
    api_docs.add_static(app)
    desk.setup(app)
    app.cleanup_ctx.append(_background)
    if keyring.open:
        log.warning(
            "API on %s:%d accepts requests without a key (none is configured)", api.host, api.port
        )
    return app


def runner(app: web.Application, api: ApiConfig) -> web.AppRunner:
    """The runner that serves ``app``. aiohttp's keep-alive timer also runs from the moment a
    connection opens until its request head is complete, so it is the deadline for the head:
    a client that sends nothing, or its headers a byte at a time, is cut off after
    ``header_timeout_s`` instead of holding the connection for ever."""
    return web.AppRunner(app, keepalive_timeout=api.header_timeout_s)


async def _background(app: web.Application) -> Any:
    """Startup: clean the upload area, watch the worker's batches; cleanup: undo that."""
    state = app[STATE]
    await io(sweep, state.config.api.upload_dir, state.queue.known_job_ids)
    undo = state.metrics.observe_batches(state.worker.pipeline) if state.worker else None
    yield
    if undo is not None:
        undo()


def _version() -> str:
    try:
        return metadata.version("drishtiksha")
    except metadata.PackageNotFoundError:
        return "unknown"
