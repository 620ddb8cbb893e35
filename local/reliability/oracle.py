"""An independent answer to "would a missing replica fit right now?", for the ``fits-are-placed`` invariant.

The operator's placement engine (``neuronplace.placement.search`` with ``fleet`` and ``fitting``)
answers that question with bitmasks, caches and a best-fit search. Using it as the checker's oracle
would make a bug in the engine a bug in the checker too: the operator would say Unschedulable, the
engine-based oracle would agree, and nothing would be reported. This module answers it again, the
slow and obvious way, from the pods and nodes alone:

- **free cores** of a node: its usable cores (the topology's, capped by the allocatable count),
  minus every core a live pod (bound, not Succeeded/Failed, terminating or not) holds: a managed
  pod (controlled by a NeuronInference its label names, with a range as long as its request) its
  ``neuronplace.io/cores`` range; any other pod what it requests: the ids of its
  ``AWS_NEURON_IDS`` annotation (cores, or whole devices for device requests), and as many cores
  as those fall short of the request taken from the top of the node (the rule docs/operations/security.md states
  for foreign pods). Any NeuronInference controller counts, as in the offline tools: the checker
  does not judge the UIDs;
- **valid runs**: every start ``s`` of ``count`` consecutive free cores is tried and kept when
  the written-out rules hold: a replica that fits in one chip stays inside one chip, a larger one
  starts on a chip boundary; ``alignedStart`` needs ``s % count == 0``; under ``Strict`` on a
  topology with device-group shapes (trn1.32xlarge), a request of more than one chip and less than
  the whole node must use one of those device counts;
- **eligible nodes**: the node's own problems (cordoned, NotReady, being deleted, unknown
  topology, no cores) as the node inventory reads them, then NoSchedule/NoExecute taints against
  the tolerations, the nodeSelector, and required node affinity;
- **room for the pod**: for every resource, what the live pods on the node (bound or pinned there)
  request plus the replica's request (``PlacementRequest.requests``) stays within the node's
  allocatable, and one more pod fits under its ``pods``. A pod's request is worked out resource by
  resource from its containers as the Kubernetes documentation states it: app containers and
  sidecars (init containers with ``restartPolicy: Always``) together, or an init container with the
  sidecars started before it when that is more; pod-level requests replace cpu, memory and
  hugepages; the overhead is added.

It never calls ``place_one``, ``allowed_starts``, ``best_start``, the ledger or the usage. Four
things are still shared with the operator, on purpose: reading a node's topology and problems
(``inventory_from_node``: data, not a decision), which node a pod is on or pinned to
(``claims.node_of``: the same kind of reading), required node affinity's match
(``constraints.affinity_matches``: Kubernetes' expression semantics, which no scenario uses) and
reading a quantity (``resources.amount`` and ``resources.counted``: the API's number grammar).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from neuronplace.placement.claims import node_of
from neuronplace.placement.constraints import affinity_matches, required_terms
from neuronplace.placement.inventory import NodeInventory, inventory_from_node
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    GROUP,
    INFERENCE_LABEL,
    KIND,
    NEURON_DEVICE_RESOURCE,
    NEURON_DEVICE_RESOURCES,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.placement.request import PlacementRequest
from neuronplace.placement.resources import amount, counted


@dataclass(frozen=True)
class Fit:
    """A run of cores where a replica could go now."""

    node: str
    start: int
    count: int

    @property
    def cores(self) -> str:
        return f"{self.start}-{self.start + self.count - 1}" if self.count > 1 else str(self.start)


def _number(value) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _amount(container: Mapping, resource: str) -> int:
    amounts = container.get("resources") or {}
    requests = amounts.get("requests") or {}
    limits = amounts.get("limits") or {}
    return _number(requests.get(resource, limits.get(resource)))


def _asks(pod: Mapping, resources: Iterable[str]) -> int:
    """What the pod asks of the most-asked of these resources, as Kubernetes counts a request: the
    containers' sum, or the largest init container's when that is more."""
    spec = pod.get("spec") or {}
    best = 0
    for resource in resources:
        total = sum(_amount(c, resource) for c in spec.get("containers") or [])
        init = max((_amount(c, resource) for c in spec.get("initContainers") or []), default=0)
        best = max(best, total, init)
    return best


def _range_ids(text) -> list[int] | None:
    """``"4-7"`` or ``"5"`` as ids; ``None`` when it is neither."""
    if not isinstance(text, str):
        return None
    low, dash, high = text.strip().partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        return None
    first, last = int(low), int(high) if dash else int(low)
    return list(range(first, last + 1)) if last >= first else None


def _spec_ids(pod: Mapping) -> list[int]:
    """The cores the pod's containers name in ``NEURONPLACE_NODE_CORES`` (its spec, which nobody can
    edit after creation); [] when none does or one of them is not a range."""
    ids: list[int] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == ENV_NODE_CORES:
                named = _range_ids(env.get("value"))
                if named is None:
                    return []
                ids += named
    return ids


def _controlling_inference(meta: Mapping) -> str | None:
    """The name of the NeuronInference that is the pod's controller, if one is."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") is True:
            group = str(ref.get("apiVersion") or "").split("/")[0]
            return ref.get("name") if ref.get("kind") == KIND and group == GROUP and ref.get("uid") else None
    return None


def held_cores(node: NodeInventory, pods: Sequence[Mapping]) -> set[int]:
    """Every core the live pods bound to ``node`` hold, as the ledger rules of docs/operations/security.md say."""
    per_chip = node.topology.cores_per_chip if node.topology else 1
    held: set[int] = set()
    counted: list[tuple[str, int]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if node_of(pod) != node.name:  # bound there, or pinned there while kube-scheduler binds it
            continue
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        annotations = meta.get("annotations") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
        cores_asked = _asks(pod, (NEURONCORE_RESOURCE,))
        devices_asked = _asks(pod, NEURON_DEVICE_RESOURCES)
        label = (meta.get("labels") or {}).get(INFERENCE_LABEL)
        raw = str(annotations.get(AWS_NEURON_IDS) or "")
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        listed_ids = [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else []
        spec_ids = _spec_ids(pod)
        # Ours: its spec names as many cores as it requests (one run, no devices). It holds those,
        # and whatever its (editable) annotations claim besides: the union.
        ours = label is not None and label == _controlling_inference(meta)
        if ours and len(set(spec_ids)) == len(spec_ids) == cores_asked > 0 and not devices_asked:
            run = sorted(spec_ids)
            if run == list(range(run[0], run[0] + len(run))):
                held.update(spec_ids, _range_ids(annotations.get(CORES_ANNOTATION)) or (), listed_ids)
                continue
        # Anything else holds what it requests, whatever its labels and annotations say, and the
        # cores its spec names if it names any.
        if not cores_asked and not devices_asked:
            continue
        listed = set(spec_ids)
        if listed_ids:
            listed |= (
                set(listed_ids) if cores_asked else {d * per_chip + c for d in listed_ids for c in range(per_chip)}
            )
        held.update(listed)
        missing = cores_asked + devices_asked * per_chip - len(listed)
        if missing > 0:
            counted.append((key, missing))
    # Pods with only a count: that many cores from the top of the node, pod by pod in pod-key order.
    for _key, count in sorted(counted):
        wanted, core = count, node.cores - 1
        while wanted and core >= 0:
            if core not in held:
                held.add(core)
                wanted -= 1
            core -= 1
    return held


def _tolerated(taint: Mapping, tolerations: Sequence[Mapping]) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        key = toleration.get("key") or ""
        if effect and effect != taint.get("effect"):
            continue
        if key and key != taint.get("key"):
            continue
        if (toleration.get("operator") or "Equal") == "Exists":
            return True
        if (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def eligible(node: NodeInventory, request: PlacementRequest) -> bool:
    if node.problem is not None or node.topology is None or node.cores < 1:
        return False
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint, request.tolerations):
            return False
    if any(node.labels.get(key) != value for key, value in request.node_selector.items()):
        return False
    terms = required_terms(request.affinity)
    return terms is None or affinity_matches(terms, node)


def valid_starts(node: NodeInventory, request: PlacementRequest, free: set[int]) -> list[int]:
    """Every start of a run of ``cores_per_replica`` free cores that the placement rules accept."""
    topology = node.topology
    assert topology is not None
    count = request.cores_per_replica
    per_chip = topology.cores_per_chip
    whole_node = topology.chips * per_chip
    if request.shape_policy == "Strict" and topology.device_shapes and count > per_chip and count != whole_node:
        chips_needed = (count + per_chip - 1) // per_chip
        if chips_needed not in topology.device_shapes:
            return []
    starts = []
    for start in range(node.cores - count + 1):
        run = range(start, start + count)
        if any(core not in free for core in run):
            continue
        if request.aligned and start % count != 0:
            continue
        first_chip, last_chip = start // per_chip, (start + count - 1) // per_chip
        if count <= per_chip and first_chip != last_chip:
            continue
        if count > per_chip and start % per_chip != 0:
            continue
        starts.append(start)
    return starts


def _listed(resources: Mapping | None) -> dict[str, int]:
    out = {}
    for name, quantity in (resources or {}).items():
        if counted(name):
            try:
                out[name] = amount(name, quantity)
            except ValueError:
                continue
    return out


def _container_asks(container: Mapping) -> dict[str, int]:
    resources = container.get("resources") or {}
    return {**_listed(resources.get("limits")), **_listed(resources.get("requests"))}


def _pod_level(name: str) -> bool:
    return name in ("cpu", "memory") or name.startswith("hugepages-")


def pod_asks(pod: Mapping) -> dict[str, int]:
    """What one pod requests of its node, resource by resource (see the module docstring)."""
    spec = pod.get("spec") or {}
    apps = [_container_asks(c) for c in spec.get("containers") or []]
    inits = [(c.get("restartPolicy") == "Always", _container_asks(c)) for c in spec.get("initContainers") or []]
    pod_level = spec.get("resources") or {}
    pod_requests, pod_limits = _listed(pod_level.get("requests")), _listed(pod_level.get("limits"))
    overhead = _listed(spec.get("overhead"))
    containers_ask = {n for asks in apps for n in asks} | {n for _, asks in inits for n in asks}
    names = containers_ask | set(pod_requests) | set(pod_limits) | set(overhead)
    out = {}
    for name in names:
        running = sum(asks.get(name, 0) for asks in apps) + sum(a.get(name, 0) for sidecar, a in inits if sidecar)
        peak = sidecars = 0
        for sidecar, asks in inits:
            if sidecar:
                sidecars += asks.get(name, 0)
                peak = max(peak, sidecars)
            else:
                peak = max(peak, sidecars + asks.get(name, 0))
        total = max(running, peak)
        if _pod_level(name) and name in pod_requests:
            total = pod_requests[name]
        elif _pod_level(name) and name in pod_limits and (name not in containers_ask or name.startswith("hugepages-")):
            total = pod_limits[name]  # the API server defaults the pod-level request to the limit
        out[name] = total + overhead.get(name, 0)
    return out


def allocatable_of(node: Mapping) -> dict[str, int]:
    """A node's allocatable of every counted resource, and ``pods``."""
    listed = (node.get("status") or {}).get("allocatable") or {}
    try:
        pods = amount("pods", listed.get("pods", 0))
    except ValueError:
        pods = 0
    return {**_listed(listed), "pods": pods}


def requested_by(pods: Sequence[Mapping]) -> dict[str, int]:
    """What the live ones of ``pods`` request together, Neuron resources aside (they are the cores
    above, counted core by core), and ``pods``: how many there are."""
    live = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
    total = {"pods": len(live)}
    for pod in live:
        for name, value in pod_asks(pod).items():
            if not name.startswith(NEURON_DEVICE_RESOURCE):
                total[name] = total.get(name, 0) + value
    return total


def room_for(node: Mapping, pods: Sequence[Mapping], asks: Mapping[str, int]) -> bool:
    """Whether one more pod asking ``asks`` fits beside ``pods`` on ``node`` (an API dict)."""
    allocatable = allocatable_of(node)
    requested = requested_by(pods)
    wanted = {name: value for name, value in asks.items() if value > 0 and not name.startswith(NEURON_DEVICE_RESOURCE)}
    wanted["pods"] = 1
    return all(requested.get(name, 0) + value <= allocatable.get(name, 0) for name, value in wanted.items())


def first_fit(request: PlacementRequest, nodes: Sequence[Mapping], pods: Sequence[Mapping]) -> Fit | None:
    """Some node and run where one more replica of ``request`` could go now, or ``None`` (nodes as
    the API's JSON dicts; pods of every namespace)."""
    by_node: dict[str, list[Mapping]] = {}
    for pod in pods:
        name = node_of(pod)
        if name:
            by_node.setdefault(name, []).append(pod)
    for node_obj in sorted(nodes, key=lambda n: (n.get("metadata") or {}).get("name") or ""):
        node = inventory_from_node(dict(node_obj))
        if not eligible(node, request) or node.cores < request.cores_per_replica:
            continue
        if not room_for(node_obj, by_node.get(node.name, []), request.requests):
            continue
        free = set(range(node.cores)) - held_cores(node, by_node.get(node.name, []))
        starts = valid_starts(node, request, free)
        if starts:
            return Fit(node.name, starts[0], request.cores_per_replica)
    return None
