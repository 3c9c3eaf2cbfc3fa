"""PF-MSMTrec core: data, templated MMoE, local training, federated aggregation, simulation.

Nothing in this package opens a socket, imports a service or changes the process
environment on import; the services (aggregator, scenario_client, gateway) are thin shells
over it, and the entry points (``msmtrec_app.cli``) set process-wide defaults such as
``OMP_WAIT_POLICY`` (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
