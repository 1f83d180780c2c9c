"""Calibration server: one process, uvloop + httptools, a fixed reply to every request.

It reads (and ignores) the request body, so wrk's POSTs cost the same bytes
as against shmserve. Its req/s and latency are the ceiling of the HTTP stack
on this machine; shmserve's HTTP figures are divided by them.

    python -m perf.trivial_server PORT
"""
from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


class FixedReplyProtocol(asyncio.Protocol):
    """Answers every complete request with the same 200 response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(_REPLY)


def main(argv: list[str]) -> int:
    """Serve on 127.0.0.1:PORT until killed."""
    port = int(argv[1]) if len(argv) > 1 else 8099

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FixedReplyProtocol, "127.0.0.1", port, backlog=1024)
        print(f"ready {port}", flush=True)
        await server.serve_forever()

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
