"""The federation server: gRPC rounds around the core Strategy, a REST status API, persistence.

A thin shell: aggregation is :class:`msmtrec.federation.strategy.Strategy`, the same object
``msmtrec simulate`` drives. This package adds the wire (``service``), the round state
machine (``rounds``), persistence (``checkpoint``), the status API (``status_api``,
``metrics``) and the process around them (``server``, ``cli``). Tokens and certificates
live in :mod:`servicekit` (the deployment tools make them too).
"""
