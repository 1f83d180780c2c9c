"""Request IDs, CORS, API keys and Swagger UI of the API application (no processes)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from shmserve.config import load
from shmserve.config.schema import ApiServerSettings, AuthSettings, CorsSettings, HttpSettings
from shmserve.errors import ConfigError
from shmserve.http.auth import ApiKeys
from shmserve.http.openapi import build_openapi
from shmserve.http.request_id import MAX_REQUEST_ID, RequestIds
from tests.unit.test_http_app import Harness, build_service
from tests.unit.test_http_protocol import post


def get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, extra)


@pytest.fixture
def plain() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def test_request_id_is_minted_echoed_and_unique(plain: Harness) -> None:
    got = plain.exchange(post(b"/predict", b"[[1, 2, 3]]") + post(b"/predict", b"[[1, 2, 3]]"), 2)
    ids = [headers[b"x-request-id"] for _, headers, _ in got]
    assert all(ids) and ids[0] != ids[1]


def test_request_id_from_the_caller_is_echoed_and_in_error_bodies(plain: Harness) -> None:
    (status, headers, body), = plain.exchange(post(b"/predict", b"[[1, 2]]", b"X-Request-ID: abc-123\r\n"))
    assert status == 400 and headers[b"x-request-id"] == b"abc-123"
    assert orjson.loads(body)["request_id"] == "abc-123"
    (status, headers, body), = plain.exchange(get(b"/nope", b"X-Request-ID: r-404\r\n"))
    assert status == 404 and orjson.loads(body)["request_id"] == "r-404"


@pytest.mark.parametrize("supplied", [b"x" * (MAX_REQUEST_ID + 1), b"has space", b"quote\"d", b"\xff\xfe"])
def test_unsafe_or_overlong_request_ids_are_replaced(supplied: bytes) -> None:
    ids = RequestIds()
    minted = ids.accept(supplied)
    assert minted != supplied and len(minted) < 40 and ids.accept(minted) == minted


def test_minted_ids_are_the_process_prefix_and_a_hex_counter() -> None:
    ids = RequestIds()
    first = [ids.mint() for _ in range(17)] + [ids.accept(None)]
    prefix = first[0].split(b"-")[0]
    assert len(prefix) == 12 and int(prefix, 16) >= 0
    assert first == [prefix + b"-%x" % n for n in range(1, 19)]  # 1..0x12, each once
    assert RequestIds().mint().split(b"-")[0] != prefix  # another process (or restart): another prefix


def test_request_id_reaches_the_trace_timeline(plain: Harness) -> None:
    (status, headers, _), = plain.exchange(post(b"/predict", b"[[1, 2, 3]]", b"X-Request-ID: t-1\r\nX-Shmserve-Trace: 1\r\n"))
    assert status == 200 and orjson.loads(headers[b"x-shmserve-trace"])["request_id"] == "t-1"


# -- CORS -------------------------------------------------------------------------
def cors_harness(**cors: object) -> Harness:
    return Harness(settings=ApiServerSettings(http=HttpSettings(cors=CorsSettings(enabled=True, **cors))))  # type: ignore[arg-type]


def preflight(path: bytes, origin: bytes, method: bytes = b"POST", headers: bytes = b"content-type") -> bytes:
    return (b"OPTIONS %s HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nAccess-Control-Request-Method: %s\r\n"
            b"Access-Control-Request-Headers: %s\r\n\r\n" % (path, origin, method, headers))


def test_cors_is_off_by_default(plain: Harness) -> None:
    (status, headers, _), = plain.exchange(preflight(b"/predict", b"https://app.example"))
    assert status == 405 and b"access-control-allow-origin" not in headers
    (status, headers, _), = plain.exchange(post(b"/predict", b"[[1, 2, 3]]", b"Origin: https://app.example\r\n"))
    assert status == 200 and b"access-control-allow-origin" not in headers


def test_cors_preflight_and_simple_requests_for_an_allowed_origin() -> None:
    h = cors_harness(access_control_allow_origins=["https://app.example"], access_control_max_age=600,
                     access_control_allow_headers=["content-type", "x-api-key"], access_control_allow_credentials=True)
    try:
        (status, headers, _), = h.exchange(preflight(b"/predict", b"https://app.example"))
        assert status == 200
        assert headers[b"access-control-allow-origin"] == b"https://app.example"
        assert b"POST" in headers[b"access-control-allow-methods"]
        assert headers[b"access-control-allow-headers"] == b"content-type"
        assert headers[b"access-control-max-age"] == b"600"
        assert headers[b"access-control-allow-credentials"] == b"true" and headers[b"vary"] == b"origin"
        (status, headers, _), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"Origin: https://app.example\r\n"))
        assert status == 200 and headers[b"access-control-allow-origin"] == b"https://app.example"
        assert b"x-request-id" in headers[b"access-control-expose-headers"]
        # errors carry the headers too, so the page can read them
        (status, headers, _), = h.exchange(post(b"/predict", b"[[1]]", b"Origin: https://app.example\r\n"))
        assert status == 400 and headers[b"access-control-allow-origin"] == b"https://app.example"
    finally:
        h.close()


def test_cors_refuses_other_origins_methods_and_headers() -> None:
    h = cors_harness(access_control_allow_origins=["https://app.example"], access_control_allow_methods=["POST"],
                     access_control_allow_headers=["content-type"])
    try:
        (status, _, body), = h.exchange(preflight(b"/predict", b"https://evil.example"))
        assert status == 400 and "access_control_allow_origins" in orjson.loads(body)["message"]
        (status, _, body), = h.exchange(preflight(b"/predict", b"https://app.example", b"DELETE"))
        assert status == 400 and "DELETE" in orjson.loads(body)["message"]
        (status, _, body), = h.exchange(preflight(b"/predict", b"https://app.example", headers=b"x-secret"))
        assert status == 400 and "x-secret" in orjson.loads(body)["message"]
        (status, headers, _), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"Origin: https://evil.example\r\n"))
        assert status == 200 and b"access-control-allow-origin" not in headers
        (status, _, _), = h.exchange(preflight(b"/nope", b"https://app.example"))
        assert status == 404
    finally:
        h.close()


def test_cors_star_origin() -> None:
    h = cors_harness(access_control_allow_origins=["*"])
    try:
        (status, headers, _), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"Origin: https://any.example\r\n"))
        assert status == 200 and headers[b"access-control-allow-origin"] == b"*"
    finally:
        h.close()


def test_cors_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="credentials"):
        CorsSettings(enabled=True, access_control_allow_origins=["*"], access_control_allow_credentials=True)
    with pytest.raises(ValidationError, match="access_control_max_age"):
        CorsSettings(access_control_max_age=-1)
    with pytest.raises(ConfigError, match="allow_origins"):
        load(environ={"SHMSERVE_CONFIG_OPTIONS": "api_server.http.cors.allow_origins=[x]"})


def test_keys_come_from_the_configuration_layers() -> None:
    cfg = load(environ={"SHMSERVE_CONFIG_OPTIONS": "api_server.logging.access.enabled=true "
                        "api_server.logging.access.format=json api_server.auth.api_key=k "
                        "api_server.auth.protect_metrics=false tracing.exporter=console tracing.sample_rate=0.01 "
                        "api_server.http.cors.enabled=true api_server.http.cors.access_control_allow_origins=[https://a.example]"})
    api = cfg.settings.api_server
    assert api.logging.access.enabled and api.logging.access.format == "json"
    assert api.http.cors.access_control_allow_origins == ["https://a.example"]
    assert api.auth.enabled and not api.auth.protect_metrics
    assert cfg.settings.tracing.exporter == "console" and cfg.settings.tracing.sample_rate == 0.01
    with pytest.raises(ConfigError, match="sample_rate"):
        load(environ={"SHMSERVE_CONFIG_OPTIONS": "tracing.sample_rate=2"})


# -- API keys --------------------------------------------------------------------
@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Harness]:
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfile-key-1\n\n  file-key-2  \n")
    h = Harness(settings=ApiServerSettings(auth=AuthSettings(api_key="inline-key", api_keys_file=str(keys))))
    yield h
    h.close()


@pytest.mark.parametrize("extra", [b"Authorization: Bearer inline-key\r\n", b"authorization: bearer file-key-2\r\n",
                                   b"X-API-Key: file-key-1\r\n"])
def test_a_valid_key_is_accepted(keyed: Harness, extra: bytes) -> None:
    (status, _, body), = keyed.exchange(post(b"/predict", b"[[1, 2, 3]]", extra))
    assert status == 200 and orjson.loads(body) == [[2, 4, 6]]


@pytest.mark.parametrize("extra", [b"", b"Authorization: Bearer wrong\r\n", b"X-API-Key: inline-ke\r\n",
                                   b"Authorization: Basic aW5saW5lLWtleQ==\r\n", b"X-API-Key: # rotated monthly\r\n"])
def test_a_missing_or_wrong_key_gets_401_json(keyed: Harness, extra: bytes) -> None:
    (status, headers, body), = keyed.exchange(post(b"/predict", b"[[1, 2, 3]]", extra + b"X-Request-ID: k-1\r\n"))
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Bearer")
    doc = orjson.loads(body)
    assert doc["error"] == "Unauthorized" and "X-API-Key" in doc["message"] and doc["request_id"] == "k-1"


def test_probes_and_docs_are_exempt_and_metrics_is_protected(keyed: Harness) -> None:
    for path in (b"/livez", b"/readyz", b"/docs", b"/docs.json", b"/docs/init.js"):
        (status, _, _), = keyed.exchange(get(path))
        assert status == 200, path
    (status, _, _), = keyed.exchange(get(b"/metrics"))
    assert status == 401
    (status, _, _), = keyed.exchange(get(b"/metrics", b"X-API-Key: inline-key\r\n"))
    assert status == 200


def test_metrics_can_be_left_open(tmp_path: Path) -> None:
    keys = ApiKeys(AuthSettings(api_key="k", protect_metrics=False))
    assert keys.allows(b"/metrics", {}) and not keys.allows(b"/predict", {})


def test_a_keys_file_that_is_missing_or_empty_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ApiKeys(AuthSettings(api_keys_file=str(tmp_path / "absent")))
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        ApiKeys(AuthSettings(api_keys_file=str(tmp_path / "empty")))


def test_openapi_declares_the_key_schemes_when_auth_is_on() -> None:
    svc, _, _ = build_service()
    doc = build_openapi(svc, "1", auth=True)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in doc["paths"]["/predict"]["post"]["responses"]
    assert "securitySchemes" not in build_openapi(svc, "1")["components"]


# -- Swagger UI ------------------------------------------------------------------
def test_docs_page_and_its_assets_come_from_the_package(plain: Harness) -> None:
    (status, headers, page), = plain.exchange(get(b"/docs"))
    assert status == 200 and headers[b"content-type"].startswith(b"text/html")
    assert b"http" not in page.replace(b"http-equiv", b"")  # nothing loaded from the network
    for asset in (b"docs/swagger-ui.css", b"docs/swagger-ui-bundle.js", b"docs/init.js"):
        assert asset in page
        (status, headers, body), = plain.exchange(get(b"/" + asset))
        assert status == 200 and len(body) > 100 and b"max-age" in headers[b"cache-control"]
    (_, _, init), = plain.exchange(get(b"/docs/init.js"))
    assert b'"docs.json"' in init


def test_openapi_document_is_valid() -> None:
    from openapi_spec_validator import validate

    svc, _, _ = build_service()
    validate(build_openapi(svc, "1.0"))
    validate(build_openapi(svc, "1.0", auth=True))
