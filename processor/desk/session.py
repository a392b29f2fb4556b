"""Who is looking at the desk: a session cookie signed with the API key it was opened with, and
the CSRF token every state-changing request must carry.

The cookie holds the key's name, an expiry and a random nonce, signed (HMAC-SHA256) with a key
derived from the API key's secret: no session table, sessions survive a restart, and removing
or changing a key ends its sessions. With no key configured the desk is open, as the API is:
the cookie is then anonymous and signed with a secret that lives as long as the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from processor.api.auth import Keyring, Principal
from processor.api.common import ApiError
from processor.config import Scope

COOKIE = "drishtiksha_desk"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
ANONYMOUS = "anonymous"
_PURPOSE = b"drishtiksha desk session"


@dataclass(frozen=True)
class Viewer:
    """The person behind a desk request."""

    name: str  # the key's name, or anonymous
    principal: Principal | None  # None when no key is configured
    csrf: str  # the token their forms carry

    def may(self, scope: Scope) -> bool:
        """Whether they may do what ``scope`` allows; everyone may with no key configured."""
        return self.principal is None or self.principal.may(scope)


class Sessions:
    """Issues and checks desk session cookies."""

    def __init__(self, keyring: Keyring, lifetime_s: float) -> None:
        self.keyring = keyring
        self.lifetime_s = lifetime_s
        # Only for the open desk; a keyed session is signed with its key.
        self._open_secret = secrets.token_bytes(32)

    def open_session(
        self, response: web.StreamResponse, key: bytes | None, principal: Principal | None
    ) -> Viewer:
        """Set a new session cookie on ``response`` for ``principal``, who presented ``key``
        (both None: the open desk)."""
        name = principal.name if principal is not None else ANONYMOUS
        nonce = secrets.token_urlsafe(16)
        expires = int(time.time() + self.lifetime_s)
        payload = json.dumps({"k": name, "x": expires, "n": nonce}, separators=(",", ":"))
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        mac_key = self._mac_key(key)
        response.set_cookie(
            COOKIE,
            f"{body}.{_mac(mac_key, body)}",
            max_age=int(self.lifetime_s),
            path="/",
            httponly=True,
            samesite="Strict",
        )
        return Viewer(name, principal, _mac(mac_key, "csrf:" + nonce))

    def viewer(self, request: web.Request) -> Viewer | None:
        """The signed-in person, or None for a missing, forged, expired or revoked session."""
        raw = request.cookies.get(COOKIE, "")
        body, _, mac = raw.partition(".")
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            name, expires, nonce = str(payload["k"]), float(payload["x"]), str(payload["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        if self.keyring.open:
            candidates: list[tuple[bytes | None, Principal | None]] = [(None, None)]
        else:
            candidates = [(secret, p) for secret, p in self.keyring.named(name)]
        for key, principal in candidates:
            mac_key = self._mac_key(key)
            if hmac.compare_digest(_raw(mac), _raw(_mac(mac_key, body))):
                return Viewer(name, principal, _mac(mac_key, "csrf:" + nonce))
        return None

    @staticmethod
    def close_session(response: web.StreamResponse) -> None:
        """Clear the session cookie."""
        response.del_cookie(COOKIE, path="/")

    def _mac_key(self, key: bytes | None) -> bytes:
        if key is None:
            return self._open_secret
        # Not the API key itself: a key used for one purpose only.
        return hmac.new(key, _PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _raw(text: str) -> bytes:
    """Bytes to compare: a client may send any bytes in a cookie or header, and a str with
    characters outside ASCII (or undecodable ones) must compare unequal, not raise."""
    return text.encode("utf-8", "surrogateescape")


def check_csrf(request: web.Request, viewer: Viewer, form_token: str | None = None) -> None:
    """Refuse (403) a state-changing request that does not carry the session's CSRF token (in
    the form or the ``X-CSRF-Token`` header) or that another site's page sent."""
    origin = request.headers.get("Origin")
    # The host alone: behind a proxy that ends TLS the scheme seen here is not the browser's.
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "cross_site_request", "the request came from another site's page")
    token = form_token if form_token is not None else request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(_raw(token), _raw(viewer.csrf)):
        raise ApiError(
            403, "csrf_token_invalid", "the form is stale or was not sent by the desk; reload"
        )
