"""Request IDs: a caller's ``X-Request-ID`` when it is sane, otherwise one minted here.

The ID is echoed in the ``x-request-id`` response header and carried by error
bodies, the access log, trace spans and the ``X-Shmserve-Trace`` timeline.

Minting runs for every request that brings no ID, so it is a counter behind a
per-process random prefix (unique across API workers and restarts), not a
UUID: formatting an int costs a fraction of generating and formatting 128
random bits.
"""
from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable

__all__ = ["MAX_REQUEST_ID", "RequestIds", "HEADER"]

#: longest caller-supplied ID accepted; a longer one is replaced by a minted ID
MAX_REQUEST_ID = 128
HEADER = b"x-request-id"
# Printable token characters only: the ID lands in headers, JSON and log lines unescaped.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_REQUEST_ID)


class RequestIds:
    """Accepts or mints request IDs for one process."""

    def __init__(self) -> None:
        self._prefix = prefix = secrets.token_hex(6).encode() + b"-"
        #: ``mint()``: a new ID, ``<12 hex chars of this process>-<counter in hex>``; C iterators all the
        #: way down (count, format, prepend), so minting runs no Python frame or bytecode
        self.mint: Callable[[], bytes] = map(prefix.__add__, map(b"%x".__mod__, itertools.count(1))).__next__

    def accept(self, supplied: bytes | None) -> bytes:
        """`supplied` when it is 1..128 token characters, else a minted ID."""
        if supplied is not None and _SANE.fullmatch(supplied):
            return supplied
        return self.mint()
