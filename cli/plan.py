"""``neuronplace plan``: where would these NeuronInference replicas go? A dry run with no cluster.

The nodes come from a fleet spec (``--fleet inf2.48xlarge=2,trn1.32xlarge=1``: hypothetical, empty,
Ready nodes) and/or a saved ``kubectl get nodes,pods -o yaml`` (``--cluster-state FILE``: its pods
hold their cores as the operator's ledger would count them, except that any pod controlled by a
NeuronInference counts as managed: the file holds no NeuronInferences whose UIDs could be checked).
The NeuronInference files are placed in the order given, with the operator's own validation,
request and placement engine, so the answer is the one the operator would reach from the same
state. Replicas that already have a
pod in the cluster state are shown where they are.

Prints one row per replica (node, node-global cores, devices, ``NEURON_RT_VISIBLE_CORES`` per
process) and the reason for every replica that cannot be placed. Exit status: 0 when every replica
has a place, 1 when some cannot be placed, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import yaml

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import NUMBERINGS
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.search import place_one
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
        help="saved `kubectl get nodes,pods -o yaml`; any pod controlled by a NeuronInference counts as managed",
    )
    parser.add_argument(
        "--numbering",
        choices=NUMBERINGS,
        default="device-local",
        help="container-visible core numbering (device-local: AWS device plugin >= 2.16)",
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


def fleet_nodes(spec: str) -> list[dict]:
    """Empty, Ready Node objects for a fleet spec (the simulated fleet's nodes, without kwok's taint)."""
    from neuronplace.local.fleet import build_fleet

    try:
        nodes = build_fleet(spec, prefix="")
    except ValueError as error:
        raise PlanInputError(f"--fleet: {error}") from None
    for node in nodes:
        node["metadata"].get("annotations", {}).pop("kwok.x-k8s.io/node", None)
        node["spec"]["taints"] = []
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return nodes


def load_state(fleet: str | None, cluster_state: str | None) -> tuple[list[dict], list[dict]]:
    """(node objects, pod objects) from the fleet spec and/or the saved cluster state."""
    if not fleet and not cluster_state:
        raise PlanInputError("give the nodes: --fleet TYPE=COUNT[,...] and/or --cluster-state FILE")
    nodes: list[dict] = []
    pods: list[dict] = []
    if cluster_state:
        for obj in _documents(cluster_state):
            if obj.get("kind") == "Node":
                nodes.append(obj)
            elif obj.get("kind") == "Pod":
                pods.append(obj)
        if not nodes and not fleet:
            raise PlanInputError(f"{cluster_state} has no Node objects (save it with `kubectl get nodes,pods -o yaml`)")
    if fleet:
        taken = {(n.get("metadata") or {}).get("name") for n in nodes}
        for node in fleet_nodes(fleet):
            if node["metadata"]["name"] in taken:
                raise PlanInputError(
                    f"--fleet node {node['metadata']['name']} has the name of a node in the cluster state"
                )
            nodes.append(node)
    return nodes, pods


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
            inference["metadata"] = metadata
        inferences.extend(found)
    return inferences


def plan(inferences: list[dict], nodes: list[dict], pods: list[dict], numbering: str) -> list[dict]:
    """One row per replica: where it goes (or already is), or why it cannot be placed."""
    from neuronplace.placement.replica_pods import ordinal_of, placement_request
    from neuronplace.placement.validation import validate

    fleet = Fleet([inventory_from_node(node) for node in nodes])
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    usage = Usage.from_pods(pods)  # their cpu, memory and the rest count as the operator counts them
    ledger.learn_nodes(fleet.nodes, token=fleet)
    rows = []
    for inference in inferences:
        meta = inference["metadata"]
        label = f"{meta['namespace']}/{meta['name']}"
        problem = validate(inference)
        if problem:
            rows.append({"inference": label, "replica": "-", "status": "invalid", "reason": problem})
            continue
        request = placement_request(inference, numbering)
        existing = {}
        for pod in pods:
            pod_meta = pod.get("metadata") or {}
            ordinal = (
                ordinal_of(pod, meta["name"]) if pod_meta.get("namespace", "default") == meta["namespace"] else None
            )
            if ordinal is not None:
                existing[ordinal] = ledger.holding_of(f"{meta['namespace']}/{pod_meta['name']}")
        for replica in range(inference["spec"].get("replicas", 1)):
            holding = existing.get(replica)
            if holding is not None:
                rows.append(
                    {
                        "inference": label,
                        "replica": replica,
                        "status": "existing",
                        "node": holding.node,
                        "cores": str(holding.cores) if holding.cores else ",".join(map(str, holding.core_ids)),
                    }
                )
                continue
            owner = f"{meta['namespace']}/{meta['name']}-{replica}"
            result = place_one(request, replica, fleet, ledger, owner, usage=usage)
            if isinstance(result, ReplicaPlacement):
                rows.append(
                    {
                        "inference": label,
                        "replica": replica,
                        "status": "placed",
                        "node": result.node,
                        "cores": str(result.cores),
                        "devices": ",".join(map(str, result.devices)),
                        "visible": " ".join(result.visible_cores),
                    }
                )
            else:
                rows.append({"inference": label, "replica": replica, "status": "unplaceable", "reason": result.message})
    return rows


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
        lines += [f"  {row['inference']} replica {row['replica']}: {row['reason']}" for row in refused]
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
        nodes, pods = load_state(args.fleet, args.cluster_state)
        inferences = load_inferences(args.files, args.namespace)
    except PlanInputError as error:
        print(f"neuronplace plan: {error}", file=sys.stderr)
        return 2
    rows = plan(inferences, nodes, pods, args.numbering)
    print(render(rows), end="")
    return 1 if any(row["status"] in ("unplaceable", "invalid") for row in rows) else 0
