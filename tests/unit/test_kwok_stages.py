"""The kwok Stages file: kwok's defaults all kept, and the kubelet-like fault stages shaped so that
they fire only for pods marked by the annotations of ``neuronplace.local.kubelet_faults``, only once
the pod is bound, and ahead of kwok's own pod-ready stage. What they do to a pod is checked on the
real control plane in tests/cluster/test_kubelet_faults.py."""

from __future__ import annotations

import pytest
import yaml

from neuronplace.local import kubelet_faults as faults
from neuronplace.local.cluster import STAGES_FILE

# kwok 0.8.0's default Stages (kwokctl uses them when a config names none) and our NotReady switch.
KWOK_STAGES = {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete", "pod-delete"}


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    documents = [doc for doc in yaml.safe_load_all(STAGES_FILE.read_text()) if doc]
    assert all(doc["kind"] == "Stage" for doc in documents)
    by_name = {doc["metadata"]["name"]: doc for doc in documents}
    assert len(by_name) == len(documents), "two Stages share a name"
    return by_name


def keys(stage: dict) -> dict[str, dict]:
    return {expression["key"]: expression for expression in stage["spec"]["selector"]["matchExpressions"]}


def test_kwok_defaults_are_all_kept(stages):
    assert KWOK_STAGES | {"node-not-ready"} <= set(stages)


@pytest.mark.parametrize("name", [faults.REJECT_STAGE, faults.EXIT_STAGE])
def test_fault_stages_act_only_on_bound_live_pods(stages, name):
    stage = stages[name]
    assert stage["spec"]["resourceRef"] == {"apiGroup": "v1", "kind": "Pod"}
    selector = keys(stage)
    assert selector[".spec.nodeName"]["operator"] == "Exists"
    assert selector[".metadata.deletionTimestamp"]["operator"] == "DoesNotExist"
    # kwok picks among matching stages at random by weight; pod-ready has none, so a marked pod
    # always takes the fault stage.
    assert stage["spec"]["weight"] > stages["pod-ready"]["spec"].get("weight", 0) == 0


def test_reject_stage_fires_only_for_pods_naming_their_node(stages):
    stage = stages[faults.REJECT_STAGE]
    selector = keys(stage)
    assert selector[".status.phase"] == {"key": ".status.phase", "operator": "In", "values": ["Pending"]}
    (marked,) = [key for key in selector if faults.REJECT_ON_NODES in key]
    assert "$node" in marked and f'"{faults.ANY_NODE}"' in marked
    assert selector[marked]["values"] == ["true"]
    template = stage["spec"]["next"]["statusTemplate"]
    assert "phase: Failed" in template and "containerStatuses" not in template  # nothing ever started
    for name in (faults.REJECT_REASON, faults.REJECT_MESSAGE):
        assert f'"{name}"' in template
    assert f'"{faults.DEFAULT_REJECT_REASON}"' in template
    assert "Node didn't have enough resource" in template


def test_exit_stage_fires_only_when_the_restart_policy_ends_the_pod(stages):
    stage = stages[faults.EXIT_STAGE]
    selector = keys(stage)
    assert selector[".status.phase"]["values"] == ["Running"]
    assert selector[f'.metadata.annotations["{faults.EXIT_AFTER}"]']["operator"] == "Exists"
    (policy,) = [key for key in selector if "restartPolicy" in key]
    assert faults.EXIT_CODE in policy and '"Never"' in policy and '"OnFailure"' in policy
    assert faults.EXIT_AFTER in stage["spec"]["delay"]["durationFrom"]["expressionFrom"]
    template = stage["spec"]["next"]["statusTemplate"]
    assert "terminated:" in template and "exitCode:" in template
    assert "Succeeded" in template and "Failed" in template


def test_other_pod_stages_do_not_read_the_fault_annotations(stages):
    for name, stage in stages.items():
        if name not in (faults.REJECT_STAGE, faults.EXIT_STAGE):
            assert "fault.neuronplace.io" not in yaml.safe_dump(stage)


def test_annotation_helpers():
    assert faults.rejected_on(["a", "b"]) == {faults.REJECT_ON_NODES: "a,b", faults.REJECT_REASON: "OutOfcpu"}
    assert faults.rejected_on("*", "OutOfmemory", "no room")[faults.REJECT_MESSAGE] == "no room"
    assert faults.exits_after(1.5, 0) == {faults.EXIT_AFTER: "1500ms", faults.EXIT_CODE: "0"}
    for bad in ([], ["a,b"], [" a"], [""]):
        with pytest.raises(ValueError):
            faults.rejected_on(bad)
    with pytest.raises(ValueError):
        faults.exits_after(-1)
