"""One typed configuration for a deployment: ``shmserve.yaml``, the environment and flags.

Layers, lowest first (a higher one replaces a lower one key by key):

1. the defaults in the schema, and for runners the ``Runner(...)`` arguments in code;
2. the YAML file given by ``shmserve serve --config FILE`` or ``SHMSERVE_CONFIG``;
3. ``SHMSERVE_CONFIG_OPTIONS="runners.mlp.batching.max_batch_size=32 api_server.workers=4"``;
4. the ``shmserve serve`` flags (``--port``, ``--api-workers``, ...).

Under ``runners:`` the settings apply to every runner; a section named after a
runner (``runners.mlp.batching.max_batch_size``) overrides them for that runner.
Within one layer the runner's own section wins; across layers the higher layer
wins. ``shmserve config show module:svc`` prints every effective value and its
source.

Adding a key: add one field to the section's model in `shmserve.config.schema`,
with its type and bounds, its default and a ``description`` (and
``json_schema_extra=flag("--name")`` when ``shmserve serve`` should take it as a
flag). Then read it where it is used: the API worker and HTTP server get the
validated `ApiServerSettings` (``spec.settings.http.your_key``), the supervisor
gets the whole `Config`. Validation, error messages, ``SHMSERVE_CONFIG_OPTIONS``,
``config show``, the bundle's and ConfigMap's effective config and the README
table (``python -m shmserve.config.table``) follow from the schema. A new section
is a new `Settings` subclass used as a field type.
"""
from __future__ import annotations

from .layers import CONFIG_ENV, OPTIONS_ENV, Layer, parse_options, read_file
from .resolve import Config, ResolvedRunner, load
from .schema import ApiServerSettings, HttpSettings, RunnerSettings, ShmserveConfig

__all__ = [
    "CONFIG_ENV", "OPTIONS_ENV", "Config", "Layer", "ResolvedRunner", "load", "parse_options", "read_file",
    "ApiServerSettings", "HttpSettings", "RunnerSettings", "ShmserveConfig",
]
