"""The operator on a mixed fleet: device-plugin nodes and nodes of the (simulated) Neuron DRA driver,
with the real kube-scheduler allocating the replicas' ResourceClaims (neuronplace.local.dra_driver)."""

from __future__ import annotations

import json
import threading

import pytest

from neuronplace.local import dra_driver
from neuronplace.placement.names import ENV_VISIBLE_CORES, KIND
from neuronplace.placement.neuron_dra import DRIVER, TOPOLOGY_GROUP_ATTRIBUTES, chip_of_device
from neuronplace.placement.resource_claims import allocated_chips, allocated_node
from support.builders import inference
from support.cluster import apply, core_map, env_of, get_inference, live, placed_and_ready, pods_of
from support.dra import claiming_pod, resource_claim

pytestmark = pytest.mark.cluster

SCHEDULER = {"binding": "Scheduler"}  # only kube-scheduler allocates claims, whatever the session's binding


def claims_in(cluster, namespace: str) -> dict[str, dict]:
    items = json.loads(
        cluster.kubectl("get", "resourceclaims", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    )["items"]
    return {c["metadata"]["name"]: c for c in items}


def group_of(slice_devices: list[dict], chips: list[int], size: int) -> set:
    """The topology groups of ``size`` the chips are in, as the node's slice says."""
    attribute = TOPOLOGY_GROUP_ATTRIBUTES[size]
    by_chip = {chip_of_device(d["name"]): d["attributes"][attribute]["int"] for d in slice_devices}
    return {by_chip[c] for c in chips}


def test_auto_lands_on_both_kinds_of_node_and_kube_scheduler_allocates_connected_chips(
    local_cluster, operator, namespace, fleet, wait_for
):
    plugin_node, dra_node = fleet("inf2.48xlarge=1,trn2.48xlarge=1:dra")
    # 16 cores a replica, 2 processes: one fits the inf2 node's 24 cores; the others take 4 chips
    # each (LNC 2: 4 cores a chip) on the trn2 node, each claim kept to one topology group of 4.
    body = inference("mixed", cores=16, processes=2, replicas=3, pool=fleet.pool, **SCHEDULER)
    apply(local_cluster, namespace, body)
    resource = wait_for(lambda: placed_and_ready(local_cluster, namespace, "mixed", 3), 120, "3 replicas ready")
    pods = {p["metadata"]["name"]: p for p in live(pods_of(local_cluster, namespace, "mixed"))}
    on = {name: p["spec"]["nodeName"] for name, p in pods.items()}
    assert sorted(on.values()) == sorted([plugin_node, dra_node, dra_node]), on
    claims = claims_in(local_cluster, namespace)
    (devices,) = [s["spec"]["devices"] for s in _slices(local_cluster, dra_node)]
    by_replica = {e["pod"]: e for e in resource["status"]["placements"]}
    taken: set[int] = set()
    for name, pod in pods.items():
        if on[name] == plugin_node:
            assert by_replica[name]["deviceManagement"] == "DevicePlugin" and name not in claims
            continue
        claim = claims[name]
        assert by_replica[name] == {**by_replica[name], "deviceManagement": "DRA", "resourceClaim": name}
        owner = claim["metadata"]["ownerReferences"][0]
        assert owner["kind"] == KIND and owner["controller"] is True
        assert owner["uid"] == resource["metadata"]["uid"]
        assert pod["spec"]["resourceClaims"] == [{"name": "neuron", "resourceClaimName": name}]
        chips = list(allocated_chips(claim))
        assert allocated_node(claim) == dra_node and len(chips) == 4
        assert len(group_of(devices, chips, 4)) == 1, f"{name}'s chips {chips} straddle topology groups"
        assert not taken & set(chips)
        taken |= set(chips)
        assert {r["driver"] for r in claim["status"]["allocation"]["devices"]["results"]} == {DRIVER}
        # kube-scheduler, not the operator, wrote the allocation (the status subresource's manager).
        writers = {m["manager"] for m in claim["metadata"]["managedFields"] if m.get("subresource") == "status"}
        assert writers == {"kube-scheduler"}, writers
        # Each process sees its own cores counted from 0 within the claimed chips.
        visible = [env_of(c)[ENV_VISIBLE_CORES] for c in pod["spec"]["containers"] if ENV_VISIBLE_CORES in env_of(c)]
        assert visible == ["0-7", "8-15"]
    # The replicas' claims go with them.
    local_cluster.kubectl("delete", "ninf", "mixed", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: not claims_in(local_cluster, namespace), 60, "the replicas' ResourceClaims to be deleted")


def _slices(cluster, node: str) -> list[dict]:
    return [cluster.get_json("resourceslice", name) for name in dra_driver.published(cluster, node)[node]]


class ChipWatch:
    """Checks at every event of a ResourceClaim watch and a pod watch (all namespaces) that no two
    allocated claims share a chip of a node: a replica's claim never holds a foreign claim's chip."""

    def __init__(self, cluster) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=cluster.kubeconfig)
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.violations: list[str] = []
        self.events = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(kind,), daemon=True) for kind in ("claims", "pods")]

    def __enter__(self) -> ChipWatch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _watch(self, kind: str) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            if kind == "claims":
                stream = watch.Watch().stream(
                    self.custom.list_cluster_custom_object, "resource.k8s.io", "v1", "resourceclaims", timeout_seconds=2
                )
            else:
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, timeout_seconds=2)
            for _ in stream:
                self.events += 1
                self.check()

    def check(self) -> None:
        claims = self.custom.list_cluster_custom_object("resource.k8s.io", "v1", "resourceclaims")["items"]
        held: dict[tuple[str, int], str] = {}
        for claim in claims:
            name = f"{claim['metadata']['namespace']}/{claim['metadata']['name']}"
            for chip in allocated_chips(claim):
                where = (allocated_node(claim) or "?", chip)
                if where in held:
                    self.violations.append(f"chip {where} held by {held[where]} and {name}")
                held[where] = name


def test_a_foreign_claims_chips_are_never_given_to_a_replica(local_cluster, operator, namespace, fleet, wait_for):
    (dra_node,) = fleet("trn2.48xlarge=1:dra")
    foreign_ns = f"{namespace}-tenant"
    local_cluster.kubectl("create", "namespace", foreign_ns)
    try:
        with ChipWatch(local_cluster) as watcher:
            # A tenant's pod takes 2 chips through its own claim (not ours: no NeuronInference owns it).
            apply(local_cluster, foreign_ns, resource_claim("tenant", 2), claiming_pod("tenant", dra_node, "tenant"))
            foreign = wait_for(
                lambda: allocated_chips(claims_in(local_cluster, foreign_ns)["tenant"]), 60, "the tenant's claim"
            )
            # Four 4-chip replicas: with the tenant's 2 chips in one group of 4, only 3 groups are whole.
            body = inference("big", cores=16, replicas=4, pool=fleet.pool, **SCHEDULER)
            apply(local_cluster, namespace, body)

            def three_and_one_waiting():
                resource = get_inference(local_cluster, namespace, "big")
                ready = [
                    p for p in live(pods_of(local_cluster, namespace, "big")) if p["status"].get("phase") == "Running"
                ]
                placed = {c["type"]: c for c in resource.get("status", {}).get("conditions", [])}.get("Placed", {})
                return len(ready) == 3 and placed.get("status") == "False" and resource

            resource = wait_for(three_and_one_waiting, 120, "3 replicas running, 1 unplaceable")
            ours = claims_in(local_cluster, namespace)
            assert sorted(ours) == sorted(p["metadata"]["name"] for p in live(pods_of(local_cluster, namespace, "big")))
            for name, claim in ours.items():
                assert not set(allocated_chips(claim)) & set(foreign), f"{name} got the tenant's chips"
            placed = {c["type"]: c for c in resource["status"]["conditions"]}["Placed"]
            assert "replica 3" in placed["message"], placed
            watcher.check()
        assert watcher.events > 0 and not watcher.violations, watcher.violations
        # The map shows the tenant's claim holding its chips' cores on the node.
        assert f"{foreign_ns}/tenant" in core_map(local_cluster, fleet.pool) or "foreign" in core_map(
            local_cluster, fleet.pool
        )
    finally:
        local_cluster.kubectl("delete", "namespace", foreign_ns, "--wait=false")


def test_a_node_with_both_the_device_plugin_and_dra_slices_is_refused_and_reported(
    local_cluster, operator, namespace, fleet, wait_for
):
    (node,) = fleet("inf2.48xlarge=1")
    dra_driver.publish(local_cluster, node, "inf2.48xlarge")  # the driver beside the device plugin
    try:
        apply(local_cluster, namespace, inference("both", cores=2, replicas=1, pool=fleet.pool, **SCHEDULER))

        def refused():
            resource = get_inference(local_cluster, namespace, "both")
            placed = {c["type"]: c for c in resource.get("status", {}).get("conditions", [])}.get("Placed", {})
            return placed if placed.get("status") == "False" else None

        placed = wait_for(refused, 60, "the replica refused")
        assert "managed by both the Neuron device plugin and the DRA driver" in placed["message"], placed
        assert not live(pods_of(local_cluster, namespace, "both"))
        assert "both the Neuron device plugin" in core_map(local_cluster, fleet.pool)
    finally:
        dra_driver.unpublish(local_cluster, node)


def test_a_claim_left_without_its_pod_by_a_killed_operator_is_adopted_or_deleted(
    local_cluster, operator_factory, namespace, fleet, wait_for
):
    fleet("trn2.48xlarge=1:dra")
    process = operator_factory()
    apply(local_cluster, namespace, inference("kept", cores=4, replicas=1, pool=fleet.pool, **SCHEDULER))
    resource = wait_for(lambda: placed_and_ready(local_cluster, namespace, "kept", 1), 120, "1 replica ready")
    process.kill()  # SIGKILL: no clean-up of any kind
    # What a kill between a claim's create and its pod's leaves: the scale-up's claims, no pods.
    (made,) = claims_in(local_cluster, namespace).values()
    for ordinal in (1, 5):
        leftover = json.loads(json.dumps(made))
        leftover["metadata"] = {"name": f"kept-{ordinal}", "ownerReferences": made["metadata"]["ownerReferences"]}
        leftover.pop("status", None)
        apply(local_cluster, namespace, leftover)
    leftover_uid = claims_in(local_cluster, namespace)["kept-1"]["metadata"]["uid"]
    local_cluster.kubectl("scale", "ninf", "kept", "-n", namespace, "--replicas=2", "--timeout=0s")
    process.start()
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "kept", 2), 120, "2 replicas ready after the restart")
    # Replica 1 adopted its leftover claim; replica 5's (beyond replicas) is deleted: none leaks.
    wait_for(lambda: sorted(claims_in(local_cluster, namespace)) == ["kept-0", "kept-1"], 60, "no leaked claim")
    assert claims_in(local_cluster, namespace)["kept-1"]["metadata"]["uid"] == leftover_uid  # adopted, not remade
    assert resource["metadata"]["uid"] == get_inference(local_cluster, namespace, "kept")["metadata"]["uid"]
