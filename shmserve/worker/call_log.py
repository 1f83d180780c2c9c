"""The runner worker's log lines about single calls, each naming the HTTP request it serves.

A line ends with ``request_id=ID``: the ID of the HTTP request the call serves
(its descriptor's ``request_tag``, read from the call's slot, so a line must be
written before the call's last answer frees the slot), ``-`` for a call made
outside an HTTP request. Failed calls are logged as WARNING; refusals at
admission are not (they come at high rates by design, and the caller reports
them). With ``runners[.NAME].logging.slow_call_ms`` set, a call that took at
least that long from its submit to its result is logged too (WARNING), with
its queue wait and model time: the runner's side of the access log's
``slow_ms``.
"""
from __future__ import annotations

import logging
from typing import Any

from ..shm import ring

__all__ = ["log_failure", "log_slow", "request_id"]

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


def log_slow(batch: list[Any], method: str, slow_s: float | None, t_batch: float, t_model: float, t_done: float,
             items: int) -> None:
    """Log each call of `batch` that took at least `slow_s` from its submit to its result (None: off).

    Called once per batch, before its results are written (the request IDs are in their slots);
    `t_batch`, `t_model`, `t_done`: the batch started, its model call started and ended; `items`:
    the batch's size along the batch dimension.
    """
    if slow_s is None:
        return
    for r in batch:
        total = t_done - r.submit
        if total >= slow_s:
            log.warning("runner worker: slow call %d of method %r: %.1f ms (queue wait %.1f ms, model %.1f ms, "
                        "batch of %d) request_id=%s", r.seq, method, total * 1e3, max(0.0, t_batch - r.submit) * 1e3,
                        (t_done - t_model) * 1e3, items, request_id(r))
