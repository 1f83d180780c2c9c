"""The OpenAPI 3 document of a Service, served at ``GET /docs.json``."""
from __future__ import annotations

from typing import Any

from ..errors import api_responses
from ..io import DTYPE_HEADER, SHAPE_HEADER, NumpyNdarray
from ..service import Service

__all__ = ["build_openapi"]

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "error", "message"],
    "properties": {
        "status": {"type": "integer", "description": "the HTTP status"},
        "error": {"type": "string", "description": "error type, e.g. InvalidInput or RunnerOverloaded"},
        "message": {"type": "string", "description": "what was wrong and what to do"},
        "request_id": {"type": "string", "description": "the request's ID (also in the x-request-id header)"},
    },
}

_REQUEST_ID = {"in": "header", "name": "X-Request-ID", "required": False,
               "schema": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:/+=@-]+$"},
               "description": "the caller's request ID, echoed in x-request-id; one is minted when absent"}
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}

# Generated from the one error table: every status an API call can answer with, and why.
_ERRORS = {str(status): text for status, text in api_responses().items()}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def build_openapi(service: Service, version: str = "", auth: bool = False) -> dict[str, Any]:
    """Build the OpenAPI 3.0 document of `service`'s APIs and the server endpoints.

    With `auth` the APIs declare the API key schemes (Swagger UI's *Authorize* then sends the key).
    """
    paths: dict[str, Any] = {}
    for api in service.apis.values():
        op: dict[str, Any] = {
            "operationId": api.name,
            "summary": api.doc.splitlines()[0] if api.doc else api.name,
            "requestBody": api.input.openapi_request_body(),
            "responses": {
                "200": {"description": "Success", "content": api.output.openapi_responses()},
                **{code: _error_response(text) for code, text in _ERRORS.items()},
            },
        }
        if api.doc:
            op["description"] = api.doc
        op["parameters"] = [_REQUEST_ID]
        if auth:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            op["responses"]["401"] = _error_response("Missing or wrong API key.")
        if isinstance(api.input, NumpyNdarray):
            op["parameters"] = [
                _REQUEST_ID,
                {"in": "header", "name": DTYPE_HEADER, "required": False, "schema": {"type": "string"},
                 "description": "dtype of an application/octet-stream body, e.g. float32"},
                {"in": "header", "name": SHAPE_HEADER, "required": False, "schema": {"type": "string"},
                 "description": "shape of an application/octet-stream body, comma-separated, e.g. 1,784"},
            ]
        paths[api.route] = {"post": op}
    text = {"text/plain": {"schema": {"type": "string"}}}
    paths["/livez"] = {"get": {"operationId": "livez", "summary": "Liveness: the API worker answers.",
                               "responses": {"200": {"description": "alive", "content": text}}}}
    paths["/readyz"] = {"get": {"operationId": "readyz", "summary": "Readiness: every runner has a live worker.",
                                "responses": {"200": {"description": "ready", "content": text},
                                              "503": _error_response("a runner has no live worker")}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics of this API worker.",
                                 "responses": {"200": {"description": "Prometheus text format", "content": text}}}}
    paths["/docs"] = {"get": {"operationId": "docs", "summary": "Swagger UI for this document.",
                              "responses": {"200": {"description": "HTML page",
                                                    "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    paths["/docs.json"] = {"get": {"operationId": "openapi", "summary": "This document.",
                                   "responses": {"200": {"description": "OpenAPI 3 document",
                                                         "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": service.name, "version": version or "0", "description": f"shmserve service {service.name!r}"},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR_SCHEMA}, **({"securitySchemes": _SECURITY_SCHEMES} if auth else {})},
    }
