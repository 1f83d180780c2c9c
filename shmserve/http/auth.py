"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time.

Configured with ``api_server.auth.api_key`` (one key) and/or
``api_server.auth.api_keys_file`` (one key per line, for a mounted secret;
blank lines and lines starting with ``#`` are skipped). The file is read when
the API worker starts: restart the server to rotate keys.

``/livez``, ``/readyz`` and the v2 protocol's ``/v2/health/live`` and
``/v2/health/ready`` are always open (probes carry no credentials), and so
is the API documentation (``/docs``, its assets, ``/docs.json``: the browser
loads them before the user can enter a key in Swagger UI's *Authorize*).
``/metrics`` needs a key unless ``api_server.auth.protect_metrics`` is false.
A request without a valid key gets 401 with a JSON body.
"""
from __future__ import annotations

import hmac
from pathlib import Path

from ..config.schema import AuthSettings
from ..errors import ConfigError

__all__ = ["ApiKeys", "OPEN_PATHS", "load_keys"]

#: paths that never need a key
OPEN_PATHS = frozenset({b"/livez", b"/readyz", b"/docs", b"/docs.json", b"/v2/health/live", b"/v2/health/ready"})
_DOCS_ASSETS = b"/docs/"
_BEARER = b"bearer "


def load_keys(settings: AuthSettings) -> list[bytes]:
    """Every configured key; `ConfigError` when a keys file is missing or holds none."""
    keys: list[str] = []
    if settings.api_key:
        keys.append(settings.api_key.strip())
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"api_server.auth.api_keys_file {str(path)!r} cannot be read: {exc.strerror}") from None
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise ConfigError(f"api_server.auth.api_keys_file {str(path)!r} holds no key (one key per line)")
        keys.extend(found)
    return [k.encode() for k in keys]


class ApiKeys:
    """Checks the API key of each request."""

    def __init__(self, settings: AuthSettings) -> None:
        self._keys = load_keys(settings)
        if not self._keys:
            raise ConfigError("api_server.auth is enabled without a key; set api_key or api_keys_file")
        self.open_paths = OPEN_PATHS if settings.protect_metrics else OPEN_PATHS | {b"/metrics"}

    def exempt(self, path: bytes) -> bool:
        """Whether `path` is answered without a key."""
        return path in self.open_paths or path.startswith(_DOCS_ASSETS)

    def allows(self, path: bytes, headers: dict[bytes, bytes]) -> bool:
        """Whether a request for `path` with `headers` may proceed."""
        if self.exempt(path):
            return True
        presented = headers.get(b"x-api-key")
        if presented is None:
            auth = headers.get(b"authorization")
            if auth is None or auth[:7].lower() != _BEARER:
                return False
            presented = auth[7:].strip()
        # Every key is compared, each in constant time, so timing tells nothing about which matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        return ok
