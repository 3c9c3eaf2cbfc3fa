"""PF-MSMTrec core: data, templated MMoE, local training, federated aggregation, simulation.

Nothing in this package opens a socket; the services (aggregator, scenario_client, gateway)
are thin shells over it.

One process-wide default is set here, before torch is imported by anything of ours:
``OMP_WAIT_POLICY=PASSIVE`` (unless the environment already sets it). With the default
(active) policy, torch's OpenMP threads spin at every barrier; when other processes share
the cores — the normal case here: an aggregator, several clients and a gateway on one
machine, or CI — the spinning threads steal the cores from the working one. Measured on a
busy 2-core machine with 2 torch threads: a ``small``-preset training step 3-11× faster, a
``paper`` step 1.3-1.6× faster (benchmarks/results/performance.md). Set
``OMP_WAIT_POLICY=ACTIVE`` to get spinning back on a dedicated machine. It has no effect if
torch was imported before msmtrec (OpenMP reads it when torch loads).
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
