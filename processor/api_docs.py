"""``/openapi.json`` and the interactive docs at ``/docs``, served from the Swagger UI files that
the ``flask-swagger-ui`` wheel ships (Swagger UI 5, which reads OpenAPI 3.1), never from a CDN."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp import web

from processor.api_common import STATE
from processor.api_openapi import document

STATIC_PREFIX = "/docs/static"
# Only our own files may run on the docs page; Swagger UI sets inline styles and data: icons.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)
_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>Drishtiksha API</title>
  <link rel="stylesheet" href="{STATIC_PREFIX}/swagger-ui.css">
  <link rel="stylesheet" href="{STATIC_PREFIX}/index.css">
  <link rel="icon" type="image/png" href="{STATIC_PREFIX}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{STATIC_PREFIX}/swagger-ui-bundle.js"></script>
  <script src="{STATIC_PREFIX}/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
# A separate script rather than an inline one, so the page's policy can forbid inline code.
_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
};
"""


def swagger_ui_dir() -> Path:
    """The installed Swagger UI distribution. Found without importing its package, which would
    import Flask for nothing."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flask-swagger-ui is not installed; it provides the /docs assets")
    return Path(next(iter(spec.submodule_search_locations))) / "dist"


def add_static(app: web.Application) -> None:
    """Serve the Swagger UI files under ``/docs/static``."""
    app.router.add_static(STATIC_PREFIX, swagger_ui_dir(), append_version=False)


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    state = request.app[STATE]
    return web.json_response(
        document(state.version, state.detector_keys, state.config.api.request_timeout_s)
    )


async def docs_page(request: web.Request) -> web.Response:
    """GET /docs: Swagger UI over /openapi.json."""
    return web.Response(
        text=_PAGE, content_type="text/html", headers={"Content-Security-Policy": _CSP}
    )


async def docs_init(request: web.Request) -> web.Response:
    """GET /docs/init.js: starts Swagger UI."""
    return web.Response(text=_INIT, content_type="text/javascript")
