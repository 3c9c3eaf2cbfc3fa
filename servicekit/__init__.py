"""Support shared by the services and the tools that start them; no service logic.

* ``settings``: the one settings pattern (pydantic-settings model → flags, environment, file).
* ``http_limits``: uvicorn's httptools protocol with a bound on the request head.
* ``auth``: per-scenario bearer tokens (tables, files, generation).
* ``certs``: development TLS material.

Below the services and the composition layer, above the core; opens no socket itself
(docs/ARCHITECTURE.md).
"""
