"""build_pod: the pod manifest for one placed replica (names, ownership, annotations, env, resources)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.placement import claims, pods
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement
from neuronplace.placement.search import place_one
from neuronplace.runtime.coreset import CoreRange, parse_core_set
from support import builders

# The caller's clock: placement reads none, it is given the time.
NOW_NS = 1_795_860_000_000_000_000

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def inference(cores=8, processes=2, **spec_extra):
    """ml/bert: 2 replicas of ``cores``, a template with labels, annotations, env, resources, a
    sidecar and a toleration of its own; ``spec_extra``'s keys go into the spec."""
    return builders.inference(
        "bert",
        namespace="ml",
        uid="uid-1",
        generation=1,
        replicas=2,
        cores=cores,
        processes=processes,
        tolerations=(KWOK_TOLERATION,),
        annotations={"team": "search"},
        template_spec={
            "containers": [
                {
                    "name": "model",
                    "image": "bert:1",
                    "env": [{"name": "MODEL", "value": "bert"}],
                    "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
                },
                {"name": "sidecar", "image": "envoy:1"},
            ],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        },
        spec={"dataParallel": {"dim": 0, "dynamicBatching": False, "numWorkers": 4}, **spec_extra},
    )


def placement_on(cores: CoreRange, processes: int, numbering="device-local", replica=1, exact=True):
    """A real ReplicaPlacement from the placement engine for an inf2.48xlarge node (2 cores per chip),
    asking for ``cores``; with ``exact=False`` the engine may choose another start."""
    node = {
        "metadata": {"name": "inf2-a", "labels": {"node.kubernetes.io/instance-type": "inf2.48xlarge"}},
        "status": {
            "allocatable": {"aws.amazon.com/neuroncore": "24"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    request = PlacementRequest(
        inference="ml/bert",
        cores_per_replica=cores.count,
        processes_per_replica=processes,
        shape_policy="Permissive",
        numbering=numbering,
    )
    result = place_one(
        request, replica, [inventory_from_node(node)], Ledger(), pod=f"ml/bert-{replica}", prefer=("inf2-a", cores)
    )
    assert isinstance(result, ReplicaPlacement), result
    assert result.cores == cores or not exact, result
    return result


def env_of(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_name_labels_owner_and_binding():
    pod = pods.build_pod(inference(), placement_on(CoreRange(4, 8), 2), now_ns=123)
    meta = pod["metadata"]
    assert meta["name"] == "bert-1" and meta["namespace"] == "ml"
    assert meta["labels"] == {"app": "bert", "neuronplace.io/inference": "bert", "neuronplace.io/replica": "1"}
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "neuronplace.io/v1alpha1",
        "kind": "NeuronInference",
        "name": "bert",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert "nodeName" not in pod["spec"], "Scheduler mode (the default) leaves binding to kube-scheduler"
    assert claims.pinned_node(pod) == claims.node_of(pod) == "inf2-a"
    assert "schedulerName" not in pod["spec"]
    direct = pods.build_pod(inference(), placement_on(CoreRange(4, 8), 2), binding="Direct", now_ns=123)
    assert direct["spec"]["nodeName"] == "inf2-a" and "affinity" not in direct["spec"]
    with pytest.raises(ValueError, match="binding 'Bound'"):
        pods.build_pod(inference(), placement_on(CoreRange(4, 8), 2), binding="Bound", now_ns=NOW_NS)


def _term(*expressions, fields=()):
    term = {"matchExpressions": list(expressions)}
    if fields:
        term["matchFields"] = list(fields)
    return term


PIN = {"key": "metadata.name", "operator": "In", "values": ["inf2-a"]}
ZONE = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
GPU = {"key": "gpu", "operator": "DoesNotExist"}


def test_pin_merges_the_node_into_every_required_term_as_the_daemonset_controller_does():
    preferred = [{"weight": 1, "preference": {"matchExpressions": [ZONE]}}]
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname"}]}
    template_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    _term(ZONE),
                    _term(GPU, fields=[{"key": "metadata.name", "operator": "NotIn", "values": ["inf2-z"]}]),
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": preferred,
        },
        "podAntiAffinity": anti,
    }
    spec = inference()
    spec["spec"]["template"]["spec"]["affinity"] = template_affinity
    pod = pods.build_pod(spec, placement_on(CoreRange(4, 8), 2), now_ns=NOW_NS)
    affinity = pod["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [_term(ZONE, fields=[PIN]), _term(GPU, fields=[PIN])]
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert affinity["podAntiAffinity"] == anti
    assert claims.pinned_node(pod) == "inf2-a"
    # The template itself is untouched (the same resource makes every replica's pod).
    assert (
        "matchFields"
        not in template_affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
            0
        ]
    )


@pytest.mark.parametrize(
    "affinity",
    [
        None,
        {},
        {"podAffinity": {}},
        {"nodeAffinity": {}},
        {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    ],
)
def test_pin_without_required_terms_is_one_term_naming_the_node(affinity):
    pinned = pods.pin_to_node(affinity, "inf2-a")
    assert pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [PIN]}]
    }
    assert claims.pinned_node({"spec": {"affinity": pinned}}) == "inf2-a"


@given(
    nodes=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), min_size=1, max_size=3),
    terms=st.integers(0, 4),
)
@settings(max_examples=50, deadline=None)
def test_pin_round_trips_through_pinned_node(nodes, terms):
    """Whatever a template required, the pod ends up pinned to the last node it was pinned to."""
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_term(ZONE) for _ in range(terms)]}
        }
    }
    for node in nodes:
        affinity = pods.pin_to_node(affinity, node)
    assert claims.pinned_node({"spec": {"affinity": affinity}}) == nodes[-1]


def test_annotations_keep_the_templates_and_add_the_device_plugins():
    pod = pods.build_pod(inference(), placement_on(CoreRange(4, 8), 2), now_ns=1789352350678418384)
    annotations = pod["metadata"]["annotations"]
    assert annotations["team"] == "search"
    assert annotations["neuronplace.io/cores"] == "4-11"
    assert annotations["AWS_NEURON_IDS"] == "4,5,6,7,8,9,10,11"
    assert annotations["NEURON_RESOURCE_TYPE"] == "aws.amazon.com/neuroncore"
    assert annotations["NEURON_ALLOCATED"] == "false"
    assert annotations["NEURON_ALLOC_TIME"] == "1789352350678418384"
    assert annotations["neuronplace.io/template-hash"] == pods.template_hash(inference()["spec"])


def test_one_container_per_process_with_its_own_cores_in_device_local_numbering():
    pod = pods.build_pod(inference(), placement_on(CoreRange(4, 8), 2), now_ns=NOW_NS)
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == ["model-0", "model-1", "sidecar"]
    first, second = env_of(containers[0]), env_of(containers[1])
    # Devices 2..5 are mounted (cores 4-11 on 2-core chips), numbered from 0 inside the container.
    assert first["NEURON_RT_VISIBLE_CORES"] == "0-3" and second["NEURON_RT_VISIBLE_CORES"] == "4-7"
    assert first["NEURONPLACE_NODE_CORES"] == "4-7" and second["NEURONPLACE_NODE_CORES"] == "8-11"
    assert (first["NEURONPLACE_PROCESS_INDEX"], second["NEURONPLACE_PROCESS_INDEX"]) == ("0", "1")
    assert first["NEURONPLACE_PROCESS_COUNT"] == "2" and first["NEURONPLACE_REPLICA"] == "1"
    assert first["MODEL"] == "bert"
    assert first["NEURONPLACE_DP_DIM"] == "0"
    assert first["NEURONPLACE_DP_DYNAMIC_BATCHING"] == "false"
    assert first["NEURONPLACE_DP_NUM_WORKERS"] == "4"
    for container in containers[:2]:
        assert container["resources"]["requests"] == {"cpu": "1", "aws.amazon.com/neuroncore": "4"}
        assert container["resources"]["limits"] == {"memory": "1Gi", "aws.amazon.com/neuroncore": "4"}
    assert "NEURON_RT_VISIBLE_CORES" not in env_of(containers[2])
    assert "aws.amazon.com/neuroncore" not in str(containers[2])


def test_global_numbering_uses_node_ids():
    pod = pods.build_pod(
        inference(), placement_on(CoreRange(4, 8), 2, numbering="global"), numbering="global", now_ns=NOW_NS
    )
    visible = [env_of(c)["NEURON_RT_VISIBLE_CORES"] for c in pod["spec"]["containers"][:2]]
    assert visible == ["4-7", "8-11"]
    assert pod["metadata"]["annotations"]["neuronplace.io/numbering"] == "global"


def test_single_process_keeps_the_container_name():
    pod = pods.build_pod(inference(cores=2, processes=1), placement_on(CoreRange(6, 2), 1), now_ns=NOW_NS)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["model", "sidecar"]
    assert env_of(pod["spec"]["containers"][0])["NEURON_RT_VISIBLE_CORES"] == "0-1"


def test_tolerations_are_merged_without_duplicates():
    spec_tolerations = inference()["spec"]["template"]["spec"]["tolerations"]
    resource = inference()
    resource["spec"]["placement"]["tolerations"] = [KWOK_TOLERATION, spec_tolerations[0]]
    pod = pods.build_pod(resource, placement_on(CoreRange(0, 8), 2), now_ns=NOW_NS)
    assert pod["spec"]["tolerations"] == [spec_tolerations[0], KWOK_TOLERATION]


def test_hand_set_neuron_env_and_resources_are_replaced():
    """A template that got past the CRD's rules must still not contradict the placement."""
    resource = inference(cores=2, processes=1)
    model = resource["spec"]["template"]["spec"]["containers"][0]
    model["env"].append({"name": "NEURON_RT_VISIBLE_CORES", "value": "0-31"})
    model["resources"]["limits"]["aws.amazon.com/neuron"] = "16"
    pod = pods.build_pod(resource, placement_on(CoreRange(0, 2), 1), now_ns=NOW_NS)
    container = pod["spec"]["containers"][0]
    assert [e["value"] for e in container["env"] if e["name"] == "NEURON_RT_VISIBLE_CORES"] == ["0-1"]
    assert "aws.amazon.com/neuron" not in container["resources"]["limits"]


def test_build_pod_does_not_modify_the_resource():
    resource = inference()
    before = repr(resource)
    pods.build_pod(resource, placement_on(CoreRange(0, 8), 2), now_ns=NOW_NS)
    assert repr(resource) == before


def test_template_hash_ignores_replicas_only():
    spec = inference()["spec"]
    assert pods.template_hash(spec) == pods.template_hash({**spec, "replicas": 7})
    assert pods.template_hash(spec) != pods.template_hash({**spec, "coresPerReplica": 4})
    changed = inference()["spec"]
    changed["template"]["spec"]["containers"][0]["image"] = "bert:2"
    assert pods.template_hash(spec) != pods.template_hash(changed)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_process_ranges_partition_the_replica_range(data):
    processes = data.draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12]))
    per_process = data.draw(st.integers(1, 24 // processes))
    count = processes * per_process
    start = data.draw(st.integers(0, 24 - count))
    numbering = data.draw(st.sampled_from(["device-local", "global"]))
    placement = placement_on(CoreRange(start, count), processes, numbering=numbering, exact=False)
    start = placement.cores.start
    pod = pods.build_pod(inference(cores=count, processes=processes), placement, numbering=numbering, now_ns=NOW_NS)
    annotations = pod["metadata"]["annotations"]
    node_ids = parse_core_set(annotations["neuronplace.io/cores"])
    assert node_ids == list(range(start, start + count))
    assert annotations["AWS_NEURON_IDS"] == ",".join(map(str, node_ids))
    seen: list[int] = []
    offset = placement.devices[0] * 2 if numbering == "device-local" else 0
    for container in pod["spec"]["containers"][:processes]:
        env = env_of(container)
        global_ids = parse_core_set(env["NEURONPLACE_NODE_CORES"])
        visible_ids = parse_core_set(env["NEURON_RT_VISIBLE_CORES"])
        assert [v + offset for v in visible_ids] == global_ids
        assert container["resources"]["limits"]["aws.amazon.com/neuroncore"] == str(per_process)
        seen += global_ids
    assert seen == node_ids  # the processes split the replica's range exactly, in order, no overlap
