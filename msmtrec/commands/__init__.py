"""CLI subcommands that belong to the core (simulation, demo, local deployment, benchmarks)."""
