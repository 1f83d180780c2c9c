"""`serve_stream` (ModelStreamInfer) without gRPC: answers as requests finish, errors per request, the drain."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pb = pytest.importorskip("tritonclient.grpc.service_pb2")
from shmserve.http.grpc.stream import serve_stream  # noqa: E402
from shmserve.oip.errors import InferError  # noqa: E402


def _request(rid: str) -> Any:
    return pb.ModelInferRequest(model_name="m", id=rid)


class Gates:
    """An infer function whose answer to request ``id`` waits until the test opens that id's gate."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    def gate(self, rid: str) -> asyncio.Event:
        return self.gates.setdefault(rid, asyncio.Event())

    async def infer(self, request: Any) -> Any:
        self.started.append(request.id)
        await self.gate(request.id).wait()
        if request.id.startswith("bad"):
            raise InferError(400, "no input named 'y'")
        return pb.ModelInferResponse(model_name="m", id=request.id)


async def _feed(items: list[Any], hold: asyncio.Event | None = None) -> AsyncIterator[Any]:
    for item in items:
        yield item
    if hold is not None:  # the client keeps its side open
        await hold.wait()


def test_answers_come_as_requests_finish_and_errors_stay_per_request() -> None:
    async def main() -> list[Any]:
        g = Gates()
        stream = serve_stream(_feed([_request("a"), _request("bad-1"), _request("b")]), g.infer)
        out: list[Any] = []

        async def collect() -> None:
            async for answer in stream:
                out.append(answer)

        task = asyncio.ensure_future(collect())
        for rid in ("b", "bad-1", "a"):  # opened in the reverse of the request order
            while rid not in g.started:
                await asyncio.sleep(0)
            g.gate(rid).set()
            while len(out) < ("b", "bad-1", "a").index(rid) + 1:
                await asyncio.sleep(0)
        await asyncio.wait_for(task, 10)  # the client closed its side: the stream ends
        return out

    out = asyncio.run(asyncio.wait_for(main(), 30))  # every wait above has this deadline
    assert [a.infer_response.id for a in out] == ["b", "bad-1", "a"]
    assert out[0].error_message == "" and out[2].error_message == ""
    assert out[1].error_message == "request 'bad-1': no input named 'y'"


def test_stopping_ends_an_open_stream_once_its_requests_are_answered() -> None:
    async def main() -> tuple[list[Any], list[str]]:
        g, stopping, hold = Gates(), asyncio.Event(), asyncio.Event()
        out: list[Any] = []

        async def collect() -> None:
            async for answer in serve_stream(_feed([_request("a")], hold), g.infer, stopping):
                out.append(answer)

        task = asyncio.ensure_future(collect())
        while "a" not in g.started:
            await asyncio.sleep(0)
        stopping.set()  # the client still holds the stream open, and "a" is running
        await asyncio.sleep(0.01)
        assert not task.done()  # "a" is answered first
        g.gate("a").set()
        await asyncio.wait_for(task, 10)  # then the stream ends, though the client never closed it
        hold.set()
        return out, g.started

    out, started = asyncio.run(asyncio.wait_for(main(), 30))
    assert [a.infer_response.id for a in out] == ["a"] and started == ["a"]
