"""``/openapi.json`` and two pages that render it: Swagger UI at ``/docs`` (it reads OpenAPI 3.1
and sends requests) and ReDoc at ``/redoc`` (one long page to read). Both run from pinned copies
packaged in ``processor/api/static`` (provenance in its README), never from a CDN, so they work on a
LAN with no internet."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from processor.api.common import STATE
from processor.api.openapi import document

ASSETS = Path(__file__).parent / "static"
STATIC_PREFIX = "/docs/static"
REDOC_PREFIX = "/redoc/static"
# Only our own files may run on these pages; Swagger UI and ReDoc set inline styles, use data:
# icons, and ReDoc runs its search index in a worker it creates from a blob: URL.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)
# ReDoc 2.x always asks cdn.redoc.ly for the Redocly logo under its menu: img-src refuses it
# (Chromium logs the refusal), so nothing leaves the machine and ReDoc drops the image.
_REDOC_CSP = _CSP + "; worker-src blob:"
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
# No validator: Swagger UI would send the document's address to validator.swagger.io.
_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null
  });
};
"""
# ReDoc's bundle starts itself on the <redoc> element, so the page needs no script of its own.
_REDOC_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Drishtiksha API</title>
  <link rel="icon" type="image/png" href="{STATIC_PREFIX}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="{REDOC_PREFIX}/redoc.standalone.js"></script>
</body>
</html>
"""


def add_static(app: web.Application) -> None:
    """Serve the Swagger UI files under ``/docs/static`` and ReDoc's under ``/redoc/static``."""
    app.router.add_static(STATIC_PREFIX, ASSETS / "swagger-ui", append_version=False)
    app.router.add_static(REDOC_PREFIX, ASSETS / "redoc", append_version=False)


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


async def redoc_page(request: web.Request) -> web.Response:
    """GET /redoc: ReDoc over /openapi.json."""
    return web.Response(
        text=_REDOC_PAGE, content_type="text/html", headers={"Content-Security-Policy": _REDOC_CSP}
    )
