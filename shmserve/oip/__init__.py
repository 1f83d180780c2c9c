"""The Open Inference Protocol (KServe v2), independent of its transports.

`shmserve.http.v2` speaks it over REST on the API worker's HTTP server and
`shmserve.http.grpc` over gRPC; both use what this package holds:

- `datatypes`: v2 datatype names <-> numpy dtypes.
- `models`: the models a Service offers (its ``NumpyNdarray`` APIs and every
  runner method), their metadata, and one call path into them.
- `regions`: the system shared-memory extension (client regions, mapped read/write).
- `stats`: the statistics extension's per-model counters.
"""
