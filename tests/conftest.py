"""Shared pytest configuration: the cluster fixtures come from neuronplace.local's plugin."""
