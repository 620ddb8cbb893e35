"""Shared pytest configuration: the cluster and operator fixtures (neuronplace.local's plugins) and the
chaos table (reliability.chaos_table)."""

pytest_plugins = ["neuronplace.local.pytest_plugin", "neuronplace.local.pytest_operator", "reliability.chaos_table"]
