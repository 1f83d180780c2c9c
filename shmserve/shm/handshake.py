"""The attach handshake on a worker's Unix socket: one orjson line each way.

The client sends its channel segment and reply semaphore names; the worker
answers with its doorbell name, pid and method table. Nothing else ever
crosses the socket; afterwards it only tells each side when the other exits.
"""
from __future__ import annotations

import socket
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
