"""HTTP serving: httptools protocol, routing, the API application, metrics and OpenAPI."""
