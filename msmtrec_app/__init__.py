"""The composition layer: the ``msmtrec`` command and what wires the services together.

Above the services (aggregator, scenario_client, gateway) and the core (``msmtrec``): the
CLI that names every service's subcommands, ``simulate``/``demo`` (research runs),
``up`` (the whole system as local processes), ``deploy`` (data and secrets for a
deployment), ``healthcheck`` (the container probe) and ``bench``. Nothing below imports it
(an import-linter contract in pyproject.toml; docs/ARCHITECTURE.md).
"""
