"""`bind_tcp`: the one way the HTTP listener and the gRPC port are bound."""
import socket

import pytest

from shmserve.errors import ConfigError
from shmserve.http.server import bind_tcp


def test_binds_with_the_option_set():
    sock = bind_tcp("127.0.0.1", 0, socket.SO_REUSEPORT, "cannot use gRPC port", "pick another --grpc-port")
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_a_busy_port_is_a_config_error_that_says_what_to_do():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*; pick another --port"):
            bind_tcp("127.0.0.1", port, socket.SO_REUSEADDR, "cannot listen on", "pick another --port")
    finally:
        busy.close()
