"""The v2 protocol's configuration keys: api_server.grpc.* and api_server.allow_client_shm."""
from __future__ import annotations

import textwrap

from shmserve.cli import build_parser
from shmserve.config import load
from shmserve.config.flags import flags_layer


def test_flags_set_the_grpc_port_and_the_client_shm_switch() -> None:
    args = build_parser().parse_args(["serve", "svc:svc", "--grpc-port", "0", "--allow-client-shm"])
    api = load(None, flags_layer(args), {}).settings.api_server
    assert api.grpc.port == 0 and api.grpc.enabled and api.allow_client_shm
    api = load(None, flags_layer(build_parser().parse_args(["serve", "svc:svc"])), {}).settings.api_server
    assert api.grpc.port is None and not api.allow_client_shm


def test_file_can_keep_a_port_and_turn_grpc_off(tmp_path) -> None:
    path = tmp_path / "shmserve.yaml"
    path.write_text(textwrap.dedent("""
        api_server:
          grpc: {port: 8001, enabled: false}
          allow_client_shm: true
    """))
    api = load(str(path), environ={}).settings.api_server
    assert (api.grpc.port, api.grpc.enabled, api.allow_client_shm) == (8001, False, True)
    from shmserve.http.serve import _reserve_grpc

    assert _reserve_grpc(api) is None  # off: nothing is bound
