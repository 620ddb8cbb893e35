"""The operator's data-parallel hints (pod env) reach DataParallel; explicit arguments win."""

from __future__ import annotations

import pytest

from neuronplace.placement.names import ENV_DP_DIM, ENV_DP_DYNAMIC_BATCHING, ENV_DP_NUM_WORKERS
from neuronplace.runtime.hints import DataParallelHints, hints_from_env


def test_hint_names_are_the_ones_the_operator_writes():
    env = {ENV_DP_DIM: "2", ENV_DP_DYNAMIC_BATCHING: "false", ENV_DP_NUM_WORKERS: "6"}
    assert hints_from_env(env) == DataParallelHints(dim=2, dynamic_batching=False, num_workers=6)


def test_no_hints_means_documented_defaults():
    assert hints_from_env({}) == DataParallelHints()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (ENV_DP_DIM, "-1"),
        (ENV_DP_DIM, "x"),
        (ENV_DP_NUM_WORKERS, "0"),
        (ENV_DP_NUM_WORKERS, "1.5"),
        (ENV_DP_DYNAMIC_BATCHING, "maybe"),
    ],
)
def test_malformed_hint_names_the_variable_and_value(name, value):
    with pytest.raises(ValueError, match=rf"{name}='{value}'"):
        hints_from_env({name: value})


@pytest.mark.torch
def test_data_parallel_follows_hints_unless_told_otherwise(monkeypatch):
    import torch

    from neuronplace.runtime import DataParallel

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-5")
    monkeypatch.setenv("NEURONPLACE_BACKEND", "cpu")
    monkeypatch.setenv(ENV_DP_DIM, "1")
    monkeypatch.setenv(ENV_DP_NUM_WORKERS, "3")
    monkeypatch.setenv(ENV_DP_DYNAMIC_BATCHING, "false")
    model = torch.nn.Identity()
    with pytest.warns(UserWarning, match="dim=1"):
        hinted = DataParallel(model)
    assert (hinted.dim, hinted.num_workers, hinted.dynamic_batching) == (1, 3, False)
    batch = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(hinted(batch), batch)

    explicit = DataParallel(model, dim=0)
    assert explicit.dim == 0 and explicit.dynamic_batching is False
