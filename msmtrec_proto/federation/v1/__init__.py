"""Version 1 of the federation contract (proto package ``msmtrec.federation.v1``)."""
