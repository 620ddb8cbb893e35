"""Shared pytest configuration: the cluster fixtures come from neuronplace.local's plugin."""

pytest_plugins = ["neuronplace.local.pytest_plugin"]
