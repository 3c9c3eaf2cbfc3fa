"""Helpers shared by the integration suites (federation, fault injection): free ports,
process launching with guaranteed cleanup, bounded waits, synthetic federations."""
