"""The attach handshake on a worker's Unix socket: its messages, one orjson line each way.

The client sends its channel segment and reply semaphore names (`Attach`); the
worker answers with its doorbell name, pid and method table (`Attached`), or
why it cannot (`Refused`). Afterwards the socket carries only tagged control
messages from the client (`CTL_LOOP_WAKE`), and tells each side when the
other exits. No tensor and nothing from a request ever crosses it.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import orjson

MAX_LINE = 65536


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one handshake message."""
    sock.sendall(orjson.dumps(message) + b"\n")


def receive(sock: socket.socket) -> dict[str, Any]:
    """Read one handshake message; ConnectionError if the peer closes first."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the peer closed the socket during the handshake")
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError("handshake message too long")
    message = orjson.loads(buf)
    if not isinstance(message, dict):
        raise ValueError("handshake message is not an object")
    return message


#: a control-socket message from the client: its event loop's eventfd rides along (SCM_RIGHTS)
CTL_LOOP_WAKE = b"W"


@dataclass(frozen=True)
class Attach:
    """Client to worker, once: map my channel segment and post my reply semaphore."""

    segment: str
    signal: str
    pid: int = 0

    def to_message(self) -> dict[str, Any]:
        """The orjson object sent on the socket."""
        return {"segment": self.segment, "signal": self.signal, "pid": self.pid}

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> "Attach":
        """Read a received message; ValueError names what is missing or mistyped."""
        segment, sig, pid = m.get("segment"), m.get("signal"), m.get("pid", 0)
        if not isinstance(segment, str) or not isinstance(sig, str) or not isinstance(pid, int):
            raise ValueError("attach message needs 'segment' and 'signal' names and an integer 'pid'")
        return cls(segment, sig, pid)


@dataclass(frozen=True)
class Attached:
    """Worker to client: the channel is mapped; ring my doorbell; these are my methods."""

    doorbell: str
    pid: int
    methods: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        """The orjson object sent on the socket."""
        return {"ok": True, "doorbell": self.doorbell, "pid": self.pid, "methods": self.methods}


@dataclass(frozen=True)
class Refused:
    """Worker to client: the channel could not be attached, and why."""

    error: str

    def to_message(self) -> dict[str, Any]:
        """The orjson object sent on the socket."""
        return {"ok": False, "error": self.error}


def read_answer(m: dict[str, Any]) -> Attached | Refused:
    """The worker's answer to `Attach`; ValueError when it is neither answer."""
    if not m.get("ok"):
        return Refused(str(m.get("error")))
    doorbell, pid, methods = m.get("doorbell"), m.get("pid"), m.get("methods")
    if not isinstance(doorbell, str) or not isinstance(pid, int) or not isinstance(methods, dict):
        raise ValueError("attach answer needs a 'doorbell' name, an integer 'pid' and a 'methods' table")
    return Attached(doorbell, pid, methods)
