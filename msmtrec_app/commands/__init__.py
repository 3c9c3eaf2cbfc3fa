"""Subcommands of the composition layer: simulate, demo, up, deploy, healthcheck, bench."""
