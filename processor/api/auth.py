"""API keys: where they come from, and the constant-time check of the ``X-API-Key`` header."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from processor.config import ApiConfig, ConfigError, Scope

HEADER = "X-API-Key"
# The older service read its one key from this variable; it keeps working, with every scope.
ENV_KEY = "API_KEY"


@dataclass(frozen=True)
class Principal:
    """Who sent a request, and what they may do."""

    name: str
    scopes: frozenset[Scope]

    def may(self, scope: Scope) -> bool:
        """Whether this key holds ``scope``; admin holds every scope."""
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class _Key:
    secret: bytes
    principal: Principal


class Keyring:
    """The configured keys. With none at all, every request is let through (``open``)."""

    def __init__(self, keys: list[_Key]) -> None:
        self._keys = keys

    @classmethod
    def from_config(cls, api: ApiConfig, environ: Mapping[str, str]) -> Keyring:
        """Keys from ``api.keys`` and the ``API_KEY`` variable. Refuses (ConfigError) to serve
        without any key on a host other than loopback unless ``allow_unauthenticated``."""
        keys = [_Key(k.key.encode(), Principal(k.name, frozenset(k.scopes))) for k in api.keys]
        env_key = environ.get(ENV_KEY, "")
        if env_key:
            keys.append(_Key(env_key.encode(), Principal("API_KEY", frozenset(("read", "submit")))))
        if not keys and not api.allow_unauthenticated and not is_loopback(api.host):
            raise ConfigError(
                f"api.host is {api.host!r}, which other machines can reach, but no API key is "
                "configured: add api.keys (or set API_KEY), bind api.host to 127.0.0.1, or set "
                "api.allow_unauthenticated: true if a proxy in front checks access"
            )
        return cls(keys)

    @property
    def open(self) -> bool:
        """No key is configured: the API needs none."""
        return not self._keys

    def named(self, name: str) -> list[tuple[bytes, Principal]]:
        """The secret and holder of each key called ``name``: the desk signs a signed-in
        session with the key, so removing or changing it ends that session."""
        return [(k.secret, k.principal) for k in self._keys if k.principal.name == name]

    def identify(self, presented: str | None) -> Principal | None:
        """The key's holder, or None for a missing or unknown key."""
        if not presented:
            return None
        try:
            candidate = presented.encode()
        except UnicodeEncodeError:
            # Header bytes that are not UTF-8 arrive as lone surrogates: no key looks like that.
            return None
        found: Principal | None = None
        # Compare against every key, so the time taken tells nothing about which one matched.
        for key in self._keys:
            if hmac.compare_digest(candidate, key.secret):
                found = key.principal
        return found


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
