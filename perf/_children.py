"""Bodies of the calibration child processes. Kept light: spawned children import only this."""
from __future__ import annotations

from multiprocessing.connection import Connection


def semaphore_echo(name_ping: str, name_pong: str, rounds: int) -> None:
    """Wait on `name_ping`, post `name_pong`, `rounds` times: the other half of a ping-pong."""
    import posix_ipc

    ping = posix_ipc.Semaphore(name_ping)
    pong = posix_ipc.Semaphore(name_pong)
    try:
        for _ in range(rounds):
            ping.acquire(5.0)
            pong.release()
    finally:
        ping.close()
        pong.close()


def pipe_echo(conn: Connection) -> None:
    """Receive pickled objects and send each one straight back, until None arrives."""
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.close()
