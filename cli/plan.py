"""``neuronplace plan``: where would these NeuronInference replicas go? A dry run with no cluster.

The answer is the operator's: each NeuronInference is ruled by the same function the operator
calls (``placement.ruling.rule``), on a view of the cluster read as the operator reads it (a ledger
and usage from the pods, the managed nodes, storage and priority classes), in the order the
operator serves inferences waiting for room (higher priority first, then older, then the order
given). Capacity requests already in the state are not read (they hold nothing); each replica that
fits nowhere says whether the operator would keep one for it.

The cluster comes from a fleet spec (``--fleet inf2.48xlarge=2,trn1.32xlarge=1``: hypothetical,
empty, Ready nodes) and/or a saved cluster state (``--cluster-state FILE``: ``kubectl get
nodes,pods,priorityclasses,pvc,pv,storageclasses -A -o yaml``). Its pods hold their cores as the
operator's ledger counts them, except that any pod controlled by a NeuronInference counts as
managed (the file need not hold the NeuronInferences whose UIDs would be checked); its
PriorityClasses refuse system priorities and order the inferences; its claims, volumes and storage
classes keep replicas on the nodes their volumes allow. What the plan cannot know: each replica's
failed attempts (the operator remembers them in memory, to back off and avoid nodes), so every
replica is placed as on a first try. Replicas that already have a pod are shown where they are.

Prints one row per replica (node, node-global cores, devices, ``NEURON_RT_VISIBLE_CORES`` per
process) and, for every replica that cannot be placed, why not. Exit status: 0 when every replica
has a place, 1 when some cannot be placed, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterable

import yaml

from neuronplace.placement.claims import pod_key
from neuronplace.placement.dra import dra_nodes
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import BINDING_SCHEDULER, BINDINGS, INFERENCE_LABEL, NUMBERINGS
from neuronplace.placement.pods import pod_name
from neuronplace.placement.priority import waiting_order
from neuronplace.placement.ruling import Rules, Ruling, View, rule
from neuronplace.placement.usage import Usage

KIND = "NeuronInference"


class PlanInputError(ValueError):
    """Input the plan cannot use (a file, a document, a fleet spec); the message says which."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="NeuronInference YAML files (several documents each are fine)"
    )
    parser.add_argument(
        "--fleet", metavar="SPEC", help="hypothetical empty nodes, e.g. inf2.48xlarge=2,trn1.32xlarge=1"
    )
    parser.add_argument(
        "--cluster-state",
        metavar="FILE",
        help="saved `kubectl get nodes,pods,priorityclasses,pvc,pv,storageclasses,resourceslices,resourceclaims -A -o yaml`; any pod "
        "controlled by a NeuronInference counts as managed",
    )
    parser.add_argument(
        "--numbering",
        choices=NUMBERINGS,
        default="device-local",
        help="container-visible core numbering (device-local: AWS device plugin >= 2.16)",
    )
    parser.add_argument(
        "--binding",
        choices=BINDINGS,
        default=BINDING_SCHEDULER,
        help="the operator's binding mode for resources whose spec.placement.binding names none",
    )
    parser.add_argument("--namespace", "-n", default="default", help="namespace for resources that name none")


def _documents(path: str) -> list[dict]:
    """Every object in a YAML file, with ``List`` documents (kubectl's output) flattened."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = list(yaml.safe_load_all(handle))
    except OSError as error:
        raise PlanInputError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise PlanInputError(f"{path} is not valid YAML: {error}") from None
    objects = []
    for document in loaded:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise PlanInputError(f"{path}: expected Kubernetes objects (mappings), found {type(document).__name__}")
        if document.get("kind") == "List" or (document.get("kind", "").endswith("List") and "items" in document):
            objects.extend(item for item in document.get("items") or () if isinstance(item, dict))
        else:
            objects.append(document)
    return objects


def fleet_objects(spec: str) -> tuple[list[dict], list[dict]]:
    """Empty, Ready Node objects for a fleet spec (the simulated fleet's nodes, without kwok's taint),
    and the ResourceSlices the Neuron DRA driver would publish for its ``:dra`` nodes."""
    from neuronplace.local.dra_driver import resource_slices
    from neuronplace.local.fleet import build_fleet, fleet_instances

    try:
        nodes = build_fleet(spec, prefix="")
    except ValueError as error:
        raise PlanInputError(f"--fleet: {error}") from None
    for node in nodes:
        node["metadata"].get("annotations", {}).pop("kwok.x-k8s.io/node", None)
        node["spec"]["taints"] = []
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    slices = [
        piece
        for instance in fleet_instances(spec, prefix="")
        if instance.dra
        for piece in resource_slices(instance.name, instance.instance_type)
    ]
    return nodes, slices


# The kinds a saved cluster state may hold that the ruling reads (NeuronInferences come from FILEs).
STATE_KINDS = (
    "Node",
    "Pod",
    "PriorityClass",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "ResourceSlice",
    "ResourceClaim",
)


def load_state(fleet: str | None, cluster_state: str | None) -> dict[str, list[dict]]:
    """The cluster's objects by kind (:data:`STATE_KINDS`) from the fleet spec and/or the saved state."""
    if not fleet and not cluster_state:
        raise PlanInputError("give the nodes: --fleet TYPE=COUNT[,...] and/or --cluster-state FILE")
    state: dict[str, list[dict]] = {kind: [] for kind in STATE_KINDS}
    if cluster_state:
        for obj in _documents(cluster_state):
            if obj.get("kind") in state:
                state[obj["kind"]].append(obj)
        if not state["Node"] and not fleet:
            raise PlanInputError(f"{cluster_state} has no Node objects (save it with `kubectl get nodes,pods -o yaml`)")
    if fleet:
        taken = {(n.get("metadata") or {}).get("name") for n in state["Node"]}
        nodes, slices = fleet_objects(fleet)
        for node in nodes:
            if node["metadata"]["name"] in taken:
                raise PlanInputError(
                    f"--fleet node {node['metadata']['name']} has the name of a node in the cluster state"
                )
            state["Node"].append(node)
        state["ResourceSlice"].extend(slices)
    return state


def load_inferences(paths: Iterable[str], namespace: str) -> list[dict]:
    inferences = []
    for path in paths:
        found = [obj for obj in _documents(path) if obj.get("kind") == KIND]
        if not found:
            raise PlanInputError(f"{path} holds no {KIND} object")
        for inference in found:
            metadata = inference.setdefault("metadata", {}) or {}
            if not metadata.get("name"):
                raise PlanInputError(f"{path}: a {KIND} without metadata.name")
            metadata.setdefault("namespace", namespace)
            # Not created yet: a stand-in UID, which pods in the cluster state are not controlled by.
            metadata.setdefault("uid", f"neuronplace-plan:{metadata['namespace']}/{metadata['name']}")
            inference["metadata"] = metadata
        inferences.extend(found)
    return inferences


def plan(inferences: list[dict], state: dict[str, list[dict]], rules: Rules, now: dt.datetime) -> list[dict]:
    """One row per replica: where it goes (or already is), or why it cannot be placed."""
    for pod in state["Pod"]:
        pod.setdefault("metadata", {}).setdefault("namespace", "default")
    nodes = {node["metadata"]["name"]: node for node in state["Node"]}
    dra = dra_nodes(state["ResourceSlice"])
    fleet = Fleet([inventory_from_node(node, dra.get(name)) for name, node in sorted(nodes.items())])
    ledger = Ledger.from_pods(state["Pod"], trust_any_inference=True)
    for claim in state["ResourceClaim"]:
        ledger.observe_claim(claim)
    usage = Usage.from_pods(state["Pod"])  # their cpu, memory and the rest count as the operator counts them
    claims = {
        (c["metadata"].get("namespace", "default"), c["metadata"]["name"]): c for c in state["PersistentVolumeClaim"]
    }
    volumes = {v["metadata"]["name"]: v for v in state["PersistentVolume"]}
    classes = {c["metadata"]["name"]: c for c in state["StorageClass"]}
    priorities = {c["metadata"]["name"]: c["value"] for c in state["PriorityClass"] if isinstance(c.get("value"), int)}
    rows = []
    # The order the operator serves inferences waiting for room; ties keep the order given.
    for index in waiting_order(dict(enumerate(inferences)), priorities):
        inference = inferences[index]
        meta = inference["metadata"]
        view = View(
            pods=[
                pod
                for pod in state["Pod"]
                if pod["metadata"]["namespace"] == meta["namespace"]
                and (pod["metadata"].get("labels") or {}).get(INFERENCE_LABEL) == meta["name"]
            ],
            nodes=nodes,
            fleet=fleet,
            ledger=ledger,
            usage=usage,
            claims=claims,
            volumes=volumes,
            classes=classes,
            priority_classes=priorities,
        )
        rows.extend(_rows(ledger, inference, rule(inference, view, rules, now)))
    return rows


def _rows(ledger: Ledger, inference: dict, ruling: Ruling) -> list[dict]:
    meta = inference["metadata"]
    label = f"{meta['namespace']}/{meta['name']}"
    if ruling.refusal is not None:
        return [{"inference": label, "replica": "-", "status": "invalid", "message": ruling.refusal.message}]
    by_replica: dict[int, dict] = {}
    for creation in ruling.creations:
        placed = creation.placement
        by_replica[placed.replica] = {
            "status": "placed",
            "node": placed.node,
            "cores": str(placed.cores),
            "devices": ",".join(map(str, placed.devices)),
            "visible": " ".join(placed.visible_cores),
        }
    for replica, message in ruling.unplaceable:
        waits = "; the operator keeps a capacity request for it, so that an autoscaler adds a node"
        by_replica[replica] = {
            "status": "unplaceable",
            "message": message + (waits if replica in ruling.waiting else ""),
        }
    replicas = inference["spec"].get("replicas")
    for replica in range(1 if replicas is None else replicas):
        if replica in by_replica:
            continue
        holding = ledger.holding_of(pod_key(meta["namespace"], pod_name(meta["name"], replica)))
        if holding is not None:
            cores = str(holding.cores) if holding.cores else ",".join(map(str, holding.core_ids))
            by_replica[replica] = {"status": "existing", "node": holding.node, "cores": cores}
        else:  # its pod is ending or backing off: the operator creates it later
            by_replica[replica] = {"status": "pending", "message": "its pod is being replaced"}
    return [{"inference": label, "replica": replica, **row} for replica, row in sorted(by_replica.items())]


def render(rows: list[dict]) -> str:
    columns = ("inference", "replica", "status", "node", "cores", "devices", "visible")
    headers = ("INFERENCE", "REPLICA", "STATUS", "NODE", "CORES", "DEVICES", "NEURON_RT_VISIBLE_CORES")
    table = [[str(row.get(c, "-")) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    refused = [row for row in rows if row["status"] in ("unplaceable", "invalid")]
    if refused:
        lines += ["", "Cannot be placed:"]
        lines += [f"  {row['inference']} replica {row['replica']}: {row['message']}" for row in refused]
    placed = sum(row["status"] == "placed" for row in rows)
    existing = sum(row["status"] == "existing" for row in rows)
    summary = f"{placed} replica{'' if placed == 1 else 's'} placed"
    if existing:
        summary += f", {existing} already running"
    summary += f", {len(refused)} cannot be placed"
    lines += ["", summary]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        state = load_state(args.fleet, args.cluster_state)
        inferences = load_inferences(args.files, args.namespace)
    except PlanInputError as error:
        print(f"neuronplace plan: {error}", file=sys.stderr)
        return 2
    rules = Rules(numbering=args.numbering, binding=args.binding)
    rows = plan(inferences, state, rules, dt.datetime.now(dt.UTC))
    print(render(rows), end="")
    return 1 if any(row["status"] in ("unplaceable", "invalid") for row in rows) else 0
