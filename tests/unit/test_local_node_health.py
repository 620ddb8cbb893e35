"""``neuronplace local node``: the condition and allocatable it writes, and bad input refused before
anything is written."""

from __future__ import annotations

import datetime as dt

import pytest

from neuronplace.cli.main import main
from neuronplace.local import node_health


def test_conditions_and_allocatable_parse_as_the_detectors_write_them():
    change = node_health.parse_condition("NeuronHealth=True:NeuronHasError_HBM_UNCORRECTABLE_ERROR")
    assert change == node_health.ConditionChange("NeuronHealth", "True", "NeuronHasError_HBM_UNCORRECTABLE_ERROR")
    patch = node_health.condition_patch(change, dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC))
    (written,) = patch["status"]["conditions"]
    assert written["type"] == "NeuronHealth" and written["status"] == "True"
    assert written["reason"] == "NeuronHasError_HBM_UNCORRECTABLE_ERROR"
    assert written["lastTransitionTime"] == "2026-12-06T12:00:00Z"
    assert node_health.parse_condition("NeuronHealth=False").reason == ""
    assert node_health.parse_allocatable("aws.amazon.com/neuron=11") == ("aws.amazon.com/neuron", 11)


@pytest.mark.parametrize(
    "text", ["NeuronHealth", "NeuronHealth=true", "=True", "Neuron Health=True", "A=True:has space"]
)
def test_a_bad_condition_is_refused_naming_the_rule(text):
    with pytest.raises(ValueError, match="Type=Status"):
        node_health.parse_condition(text)


@pytest.mark.parametrize(
    "text", ["aws.amazon.com/neuron", "aws.amazon.com/neuron=-1", "aws.amazon.com/neuron=1.5", "=3"]
)
def test_a_bad_allocatable_is_refused(text):
    with pytest.raises(ValueError, match="resource=count"):
        node_health.parse_allocatable(text)


def test_the_cli_refuses_bad_input_before_it_looks_for_a_cluster(capsys):
    args = ["local", "node", "n1", "--name", "np-does-not-exist"]
    assert main([*args, "--condition", "NeuronHealth=yes"]) == 2
    assert "must be Type=Status[:Reason]" in capsys.readouterr().err
    assert main([*args, "--condition", "NeuronHealth=True", "--allocatable", "x"]) == 2
    assert main(args) == 2 and "nothing to do" in capsys.readouterr().err
    assert main([*args, "--condition", "NeuronHealth=True"]) == 1
    assert "no local cluster named 'np-does-not-exist'" in capsys.readouterr().err


def test_cores_refuses_a_bad_unhealthy_condition_before_it_reads_the_cluster(capsys):
    assert main(["cores", "--kubeconfig", "/nonexistent", "--unhealthy-conditions", "X=maybe"]) == 2
    assert "unhealthy condition 'X=maybe'" in capsys.readouterr().err
