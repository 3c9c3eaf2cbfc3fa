"""PF-MSMTrec core: data, templated MMoE, local training, federated aggregation, simulation.

Nothing in this package opens a socket; the services (aggregator, scenario_client, gateway)
are thin shells over it.
"""

__version__ = "0.1.0"
