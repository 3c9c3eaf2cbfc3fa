"""The scenario client: one scenario's side of a networked federation.

A thin shell over :class:`msmtrec.federation.client.ClientRuntime` (the object the
simulation uses): it loads only its own scenario's data, joins the aggregator, trains each
round locally, exchanges its shared parameters, evaluates its personalized model, keeps its
local parts on its own disk, and rides out aggregator restarts.
"""
