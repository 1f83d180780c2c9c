"""An open-loop HTTP load generator on asyncio: requests at a fixed rate, whatever the server does.

Closed-loop tools (wrk) slow down with the server, so they cannot offer a multiple of its capacity;
this one starts each request at its scheduled time on a fresh connection and records when it was
sent, its status and how long the answer took. A request not answered within `timeout_s` is
abandoned (its connection closed, as a client that gives up does) and recorded with status 0.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (monotonic s), its HTTP status (0: no answer) and its latency (s)."""

    sent: float
    status: int
    latency_s: float
    retry_after: bool = False


def request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 POST that asks the server to close the connection after answering."""
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}", "connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def one(port: int, raw: bytes, timeout_s: float) -> Outcome:
    """Send `raw` on a new connection; wait for the status line and the end of the answer."""
    sent = time.monotonic()
    writer = None

    async def exchange() -> bytes:
        nonlocal writer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        return await reader.read()  # the server closes after answering (connection: close)

    try:
        data = await asyncio.wait_for(exchange(), timeout_s)
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
        retry = b"\r\nretry-after:" in data.split(b"\r\n\r\n", 1)[0].lower()
        return Outcome(sent, status, time.monotonic() - sent, retry)
    except (asyncio.TimeoutError, OSError, ValueError, IndexError):
        return Outcome(sent, 0, time.monotonic() - sent)
    finally:
        if writer is not None:
            writer.close()


async def open_loop(port: int, mix: list[tuple[bytes, float]], duration_s: float,
                    timeout_s: float) -> list[list[Outcome]]:
    """Offer each request of `mix` (raw bytes, rate per second) at its rate for `duration_s`.

    Returns one list of outcomes per entry of `mix`, in sending order. Sending times are scheduled
    from the start (a late loop catches up at once), so the offered rate does not sag under load.
    """
    start = time.monotonic()
    tasks: list[list[asyncio.Task[Outcome]]] = [[] for _ in mix]

    async def drive(i: int, raw: bytes, rate: float) -> None:
        n = int(duration_s * rate)
        for k in range(n):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks[i].append(asyncio.create_task(one(port, raw, timeout_s)))

    await asyncio.gather(*(drive(i, raw, rate) for i, (raw, rate) in enumerate(mix)))
    return [list(await asyncio.gather(*ts)) for ts in tasks]


async def probe_until(port: int, raw: bytes, good_s: float, give_up_s: float, every_s: float = 0.02) -> float:
    """Seconds until a request is answered 200 within `good_s` (one at a time); inf if not within `give_up_s`."""
    start = time.monotonic()
    while time.monotonic() - start < give_up_s:
        o = await one(port, raw, max(good_s, 0.5))
        if o.status == 200 and o.latency_s <= good_s:
            return o.sent - start
        await asyncio.sleep(every_s)
    return float("inf")
