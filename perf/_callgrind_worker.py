"""The API worker that `perf.callgrind_api` runs under valgrind: ``python _callgrind_worker.py SERVICE PORT_FILE [CONFIG]``.

A script, not a module of the perf package, so that it imports only the
``shmserve`` of the tree under test (first on PYTHONPATH). It assembles the
pieces ``shmserve serve``'s API worker does: the service loaded, its runners
attached to running runner workers, `App`, `HttpServer`, the runner-trace
metrics hook, uvloop; it writes its loopback port to PORT_FILE and serves
until SIGTERM. CONFIG, a ``shmserve.yaml``, sets ``api_server`` and ``tracing``
(the default: every operational feature off); the log is set up as the API
worker's, so access lines and console spans are written as they would be.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path


def serve_api_worker(service: str, port_file: str, config_file: str | None = None) -> None:
    """The API worker under valgrind: serve `service` on a loopback port (written to `port_file`) until SIGTERM."""
    import logging
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import uvloop

    from shmserve.client import attach
    from shmserve.config import ApiServerSettings
    from shmserve.config.layers import read_file, validate
    from shmserve.http.app import App
    from shmserve.http.server import HttpServer
    from shmserve.service import load_service
    from shmserve.traces import add_trace_hook

    svc = load_service(service)
    for runner in svc.runners:
        attach(runner, timeout=600)
    config = validate(read_file(config_file)) if config_file else None
    settings = config.api_server if config is not None else ApiServerSettings()
    logging.basicConfig(level=settings.logging.level, format="%(asctime)s api[0] %(levelname)s %(name)s: %(message)s")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    executor = ThreadPoolExecutor(max_workers=settings.threads)
    app = App(svc, executor=executor, settings=settings, tracing=config.tracing if config is not None else None)
    add_trace_hook(app.metrics.on_trace)  # as the API worker does
    server = HttpServer(app, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)

    async def run() -> None:
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await server.start(sock)
        Path(port_file + ".tmp").write_text(str(sock.getsockname()[1]))
        os.replace(port_file + ".tmp", port_file)
        await stop.wait()
        await server.shutdown()

    try:
        loop.run_until_complete(run())
    finally:
        app.close()
        executor.shutdown(wait=False)
        for runner in svc.runners:
            runner._unbind()
        loop.close()



if __name__ == "__main__":
    serve_api_worker(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
