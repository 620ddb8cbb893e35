"""The DRA test bed: ``:dra`` fleet nodes carry the simulated Neuron DRA driver's ResourceSlices, and
the real kube-scheduler allocates ResourceClaims against them (neuronplace.local.dra_driver)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neuronplace.local import dra_driver
from neuronplace.placement.names import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.neuron_dra import DEVICE_CLASS, DRIVER
from support.dra import allocated_chips, claiming_pod, resource_claim

pytestmark = pytest.mark.cluster


def test_a_dra_node_gets_slices_and_the_scheduler_allocates_connected_chips(local_cluster, namespace, fleet, wait_for):
    plugin_node, dra_node = fleet("inf2.xlarge=1,trn2.48xlarge=1:dra")
    assert dra_node.endswith("-dra-0")
    assert (
        local_cluster.get_json("deviceclass", DEVICE_CLASS)["spec"]["selectors"]
        == dra_driver.device_class()["spec"]["selectors"]
    )
    slices = dra_driver.published(local_cluster)
    assert plugin_node not in slices and len(slices[dra_node]) == 1
    (item,) = [local_cluster.get_json("resourceslice", name) for name in slices[dra_node]]
    assert item["spec"]["devices"] == dra_driver.resource_slices(dra_node, "trn2.48xlarge")[0]["spec"]["devices"]
    node = local_cluster.get_json("node", dra_node)
    assert item["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    for key in ("capacity", "allocatable"):
        assert not {NEURONCORE_RESOURCE, NEURON_DEVICE_RESOURCE} & set(node["status"][key])

    def create(*objects: dict) -> None:
        for obj in objects:
            local_cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(obj))

    def allocated(name: str) -> list[int]:
        return allocated_chips(local_cluster.get_json("-n", namespace, "resourceclaim", name))

    # Two loose chips first (kube-scheduler takes chips 0 and 1), so that four chips from one group
    # of 4 cannot be the first four free ones (2-5 straddle groups 0 and 1).
    create(resource_claim("two", 2), claiming_pod("first", dra_node, "two"))
    loose = wait_for(lambda: allocated("two"), 60, "kube-scheduler to allocate the 2-chip claim")
    create(resource_claim("four", 4, group=4), claiming_pod("second", dra_node, "four"))
    chips = wait_for(lambda: allocated("four"), 60, "kube-scheduler to allocate the 4-chip claim")
    assert len(chips) == 4 and not set(chips) & set(loose)
    assert len({chip // 4 for chip in chips}) == 1, f"chips {chips} are not of one group of 4"
    local_cluster.kubectl("-n", namespace, "wait", "pod/second", "--for=condition=Ready", "--timeout=60s")
    pod = local_cluster.get_json("-n", namespace, "pod", "second")
    assert pod["spec"]["nodeName"] == dra_node
    status = local_cluster.get_json("-n", namespace, "resourceclaim", "four")["status"]
    assert [r["uid"] for r in status["reservedFor"]] == [pod["metadata"]["uid"]]
    assert {r["driver"] for r in status["allocation"]["devices"]["results"]} == {DRIVER}

    # kube-controller-manager's resourceclaim controller unreserves and deallocates a claim whose
    # consumer is gone; the chips are free for another claim.
    local_cluster.kubectl("-n", namespace, "delete", "pod", "second", "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not local_cluster.get_json("-n", namespace, "resourceclaim", "four").get("status"),
        60,
        "the resourceclaim controller to unreserve and deallocate the claim",
    )
    assert allocated("two") == loose  # the other pod's claim keeps its chips
    create(resource_claim("again", 4, group=4), claiming_pod("third", dra_node, "again"))
    assert wait_for(lambda: allocated("again"), 60, "kube-scheduler to allocate the freed group") == chips

    status = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "status"], capture_output=True, text=True, timeout=60
    )
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip().startswith(fleet.pool)}
    assert rows[dra_node].endswith("devices=DRA") and rows[plugin_node].endswith("devices=plugin"), status.stdout


def test_publish_refuses_twice_unpublish_removes_and_a_deleted_node_takes_its_slices(local_cluster, fleet, wait_for):
    plugin_node, dra_node = fleet("inf2.48xlarge=1,trn1.32xlarge=1:dra")
    # The driver on a device-plugin node: both kinds of Neuron resource on one node (the operator
    # must refuse such a node); then the driver leaves it again.
    (name,) = dra_driver.publish(local_cluster, plugin_node, "inf2.48xlarge")
    assert dra_driver.published(local_cluster, plugin_node) == {plugin_node: [name]}
    with pytest.raises(RuntimeError, match=f"node {plugin_node} already has {DRIVER} ResourceSlices"):
        dra_driver.publish(local_cluster, plugin_node, "inf2.48xlarge")
    assert dra_driver.unpublish(local_cluster, plugin_node) == [name]
    assert dra_driver.published(local_cluster, plugin_node) == {}
    # A slice owned by another node (as one of an earlier node of the same name is, until the
    # garbage collector deletes it) is stale: publishing replaces it.
    uids = {name: local_cluster.get_json("node", name)["metadata"]["uid"] for name in (plugin_node, dra_node)}
    (stale,) = dra_driver.resource_slices(plugin_node, "inf2.48xlarge")
    stale["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": dra_node, "uid": uids[dra_node]}
    ]
    local_cluster.kubectl("create", "-f", "-", input=json.dumps(stale))
    (name,) = dra_driver.publish(local_cluster, plugin_node, "inf2.48xlarge")
    assert dra_driver.published(local_cluster, plugin_node) == {plugin_node: [name]}
    owners = local_cluster.get_json("resourceslice", name)["metadata"]["ownerReferences"]
    assert [owner["uid"] for owner in owners] == [uids[plugin_node]]
    # Slices are owned by their node: the garbage collector deletes them with it.
    local_cluster.delete_node(dra_node)
    wait_for(lambda: not dra_driver.published(local_cluster, dra_node), 60, "the garbage collector to delete the slice")
