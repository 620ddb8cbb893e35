"""Shared pytest configuration: the cluster and operator fixtures come from neuronplace.local's plugins."""

pytest_plugins = ["neuronplace.local.pytest_plugin", "neuronplace.local.pytest_operator"]
