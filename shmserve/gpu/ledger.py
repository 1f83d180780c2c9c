"""`HandoffLedger`: the whole CUDA hand-off protocol for one transport endpoint, in four calls.

The transport keeps one ledger per process and, per message to or from a peer
process, does::

    # sending (client: call arguments; worker: results)
    payload = ledger.encode(value, peer_pid)      # device tensors -> handle dicts
    meta["releases"] = ledger.owed_to(peer_pid)   # tokens of the peer's we are done with

    # receiving
    ledger.take_back(meta["releases"])            # the peer is done with these of ours
    value = ledger.decode(payload)                # handle dicts -> tensors (no copy)

Releases thus ride on messages that flow anyway; `owed_to` returns only
tokens whose views are dead and whose GPU work has finished. `sweep()` (in
`shmserve.gpu.ipc`) covers peers that die.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from . import ipc
from .handles import is_handle_dict

# Tokens owed, per peer, of this process (by pid: a forked child starts empty), shared by every
# ledger in it: `ipc.collect_releases` hands out the whole process's finished releases, and a
# process has one ledger per runner client, so the ledger that collects a token is often not
# the one that talks to its peer.
_OWED: dict[int, tuple[dict[int, list[int]], threading.Lock]] = {}
_OWED_LOCK = threading.Lock()


def _owed_of_process() -> tuple[dict[int, list[int]], threading.Lock]:
    pid = os.getpid()
    with _OWED_LOCK:
        owed = _OWED.get(pid)
        if owed is None:
            owed = _OWED[pid] = ({}, threading.Lock())
        return owed


class HandoffLedger:
    """Tokens owed to each peer, plus the encode/decode walk over call values.

    Every ledger of a process shares one table of owed tokens, so a release reaches its
    peer whichever ledger collected it.
    """

    def __init__(self) -> None:
        self._owed, self._lock = _owed_of_process()

    def encode(self, value: Any, peer_pid: int | None = None) -> Any:
        """`value` with every torch CUDA tensor / CuPy array (inside tuples, lists and
        dict values too) replaced by its `export_handle` dict for `peer_pid`."""
        if ipc.is_device_tensor(value):
            return ipc.export_handle(value, consumer_pid=peer_pid)
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, peer_pid) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict) and not is_handle_dict(value):
            return {k: self.encode(v, peer_pid) for k, v in value.items()}
        return value

    def decode(self, value: Any, copy: bool = False) -> Any:
        """`value` with every handle dict opened as a tensor (`open_handle`)."""
        if is_handle_dict(value):
            return ipc.open_handle(value, copy=copy)
        if isinstance(value, (list, tuple)):
            items = [self.decode(v, copy) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {k: self.decode(v, copy) for k, v in value.items()}
        return value

    def owed_to(self, peer_pid: int) -> list[int]:
        """Tokens to send back to `peer_pid` now (its tensors we no longer use)."""
        self._collect()
        with self._lock:
            return self._owed.pop(peer_pid, [])

    def take_back(self, tokens: list[int]) -> None:
        """The peer no longer uses these tensors of ours."""
        for token in tokens:
            ipc.release(token)

    def peers(self) -> list[int]:
        """Peers we owe tokens to (after collecting finished releases)."""
        self._collect()
        with self._lock:
            return [pid for pid, tokens in self._owed.items() if tokens]

    def forget(self, peer_pid: int) -> None:
        """Drop what we owe a peer that died (its memory is gone anyway)."""
        with self._lock:
            self._owed.pop(peer_pid, None)

    def _collect(self) -> None:
        ready = ipc.collect_releases()
        if ready:
            with self._lock:
                for sender, token in ready:
                    self._owed.setdefault(sender, []).append(token)
