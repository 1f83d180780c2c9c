"""The runner worker's log lines about single calls, each naming the HTTP request it serves.

A line ends with ``request_id=ID``: the ID of the HTTP request the call serves
(its descriptor's ``request_tag``, read from the call's slot, so a line must be
written before the call's last answer frees the slot), ``-`` for a call made
outside an HTTP request. Failed calls are logged as WARNING; refusals at
admission are not (they come at high rates by design, and the caller reports
them).
"""
from __future__ import annotations

import logging
from typing import Any

from ..shm import ring

__all__ = ["log_failure", "request_id"]

log = logging.getLogger("shmserve.worker")

# What a logged failure says of its call, per response status.
_LOGGED: dict[int, str] = {ring.ST_MODEL_ERROR: "failed", ring.ST_EXPIRED: "expired", ring.ST_BAD_REQUEST: "was refused"}


def request_id(r: Any) -> str:
    """The HTTP request ID call `r` serves, ``-`` when none (or when its channel is gone)."""
    try:
        return r.channel.view.request_tag(r.slot, r.seq) or "-"
    except ValueError:  # the channel's views were released (its client went away)
        return "-"


def log_failure(r: Any, method: str, code: int, etype: str, message: str) -> None:
    """Log that call `r` of `method` ends with status `code` (a failure kind in `_LOGGED`; others are not logged)."""
    what = _LOGGED.get(code)
    if what is not None:
        log.warning("runner worker: call %d of method %r %s: %s: %s request_id=%s",
                    r.seq, method, what, etype, message.splitlines()[0] if message else "", request_id(r))
