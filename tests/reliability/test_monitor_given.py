"""The invariant monitor knows that cores are given when a pod's containers start: the device plugin
reads the annotations then, and an edit made later changes nothing on the node (issue 24)."""

from __future__ import annotations

import copy

from neuronplace.local.fleet import build_node
from neuronplace.placement.names import AWS_NEURON_IDS
from reliability.test_monitor import _foreign, _offline_monitor


def _started_monitor(first: dict):
    monitor = _offline_monitor()
    monitor._replace("nodes", [build_node("n-0", "inf2.48xlarge")])
    monitor._replace("pods", [first])
    monitor._replace("inferences", [])
    return monitor


def test_an_annotation_edited_after_the_start_does_not_move_what_a_pod_holds():
    first = _foreign("first", "n-0", "0,1,2,3")  # Running: its process got cores 0-3
    monitor = _started_monitor(first)
    edited = copy.deepcopy(first)
    edited["metadata"]["annotations"][AWS_NEURON_IDS] = "20,21,22,23"
    monitor._apply("pods", "MODIFIED", edited)
    assert monitor.active() == []
    monitor._apply("pods", "ADDED", _foreign("second", "n-0", "0,1,2,3"))
    found = monitor.active()
    assert {(v.invariant, v.subject, v.detail) for v in found} == {
        ("exclusive-cores", f"node n-0 core {core}", "held by both other/first and other/second") for core in range(4)
    }
    assert monitor.violations == 4


def test_an_annotation_edited_before_the_start_is_what_the_pod_gets():
    first = _foreign("first", "n-0", "0,1,2,3")
    first["status"] = {"phase": "Pending"}
    monitor = _started_monitor(first)
    edited = copy.deepcopy(first)
    edited["metadata"]["annotations"][AWS_NEURON_IDS] = "20,21,22,23"
    monitor._apply("pods", "MODIFIED", edited)
    edited = copy.deepcopy(edited)
    edited["status"] = {"phase": "Running"}
    monitor._apply("pods", "MODIFIED", edited)  # started now, with 20-23
    monitor._apply("pods", "ADDED", _foreign("second", "n-0", "0,1,2,3"))
    assert monitor.active() == [] and monitor.violations == 0
