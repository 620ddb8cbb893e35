"""What one NeuronInference asks of every replica, and what placing a replica gives back.

A :class:`PlacementRequest` is made from an inference by :func:`placement_request` (and kept off
nodes by :func:`avoiding`), and validated when built (a malformed one raises ``ValueError``); placing
a replica (:mod:`.search`) gives a :class:`ReplicaPlacement` (a node and a core range) or an
:class:`Unplaceable` (a sentence saying why not, :mod:`.reasons`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from neuronplace.placement.claims import NODE_NAME_FIELD
from neuronplace.placement.constraints import required_terms, validate_toleration
from neuronplace.placement.names import NUMBERINGS, SHAPE_POLICIES, STRATEGIES
from neuronplace.placement.resources import check_items, replica_requests
from neuronplace.runtime.coreset import CoreRange


@dataclass(frozen=True)
class PlacementRequest:
    """What one NeuronInference asks of every replica. Raises ``ValueError`` when malformed."""

    inference: str
    """The NeuronInference's key, "namespace/name"."""
    cores_per_replica: int
    processes_per_replica: int = 1
    strategy: str = "BinPack"
    shape_policy: str = "Strict"
    aligned: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping, ...] = ()
    affinity: Mapping | None = None
    numbering: str = "device-local"
    requests: Mapping[str, int] = field(default_factory=dict)
    """What one replica pod requests of its node (``resources.replica_requests``)."""
    volume_terms: tuple[tuple[Mapping, ...], ...] = ()
    """Node-selector term groups the replica's volumes add (``volumes.volume_constraint``): a node
    must match one term of every group."""
    _constraints: str = field(init=False, repr=False, compare=False, default="")
    _checks: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        for name in ("cores_per_replica", "processes_per_replica"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.cores_per_replica % self.processes_per_replica:
            raise ValueError(
                f"cores_per_replica {self.cores_per_replica} is not divisible by processes_per_replica "
                f"{self.processes_per_replica}: every process needs the same number of cores"
            )
        for name, allowed in (("strategy", STRATEGIES), ("shape_policy", SHAPE_POLICIES), ("numbering", NUMBERINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.node_selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()
        ):
            raise ValueError(f"node_selector must map label names to string values, got {self.node_selector!r}")
        tolerations = tuple(self.tolerations or ())
        for toleration in tolerations:
            validate_toleration(toleration)
        object.__setattr__(self, "tolerations", tolerations)
        required_terms(self.affinity)  # validates
        if not isinstance(self.requests, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in self.requests.items()
        ):
            raise ValueError(f"requests must map resource names to whole amounts >= 0, got {self.requests!r}")
        object.__setattr__(self, "_checks", check_items(self.requests))
        for group in self.volume_terms:  # validated as a pod's required node affinity is
            required_terms(
                {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(group)}}}
            )
        constraints = json.dumps(
            [sorted(self.node_selector.items()), list(tolerations), self.affinity, self.volume_terms],
            sort_keys=True,
            default=str,
        )
        object.__setattr__(self, "_constraints", constraints)


@dataclass(frozen=True)
class ReplicaPlacement:
    replica: int
    node: str
    cores: CoreRange
    process_cores: tuple[CoreRange, ...]
    visible_cores: tuple[str, ...]
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Unplaceable:
    replica: int
    message: str  # one sentence saying why no node can take the replica now


def placement_request(
    inference: Mapping[str, Any], numbering: str, volume_terms: tuple[tuple[Mapping, ...], ...] = ()
) -> PlacementRequest:
    """The placement engine's request for a (validated) inference.

    The template's own nodeSelector, tolerations and required node affinity are honoured together
    with ``spec.placement``'s: the pod carries both, so the node must satisfy both. ``volume_terms``
    are the node terms its volumes add (``volumes.volume_constraint``).
    """
    meta = inference["metadata"]
    spec = inference["spec"]
    placement = spec.get("placement") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    selector = dict(pod_spec.get("nodeSelector") or {})
    selector.update(placement.get("nodeSelector") or {})
    tolerations = tuple(pod_spec.get("tolerations") or ()) + tuple(placement.get("tolerations") or ())
    return PlacementRequest(
        inference=f"{meta['namespace']}/{meta['name']}",
        cores_per_replica=spec["coresPerReplica"],
        processes_per_replica=spec.get("processesPerReplica", 1),
        strategy=placement.get("strategy", "BinPack"),
        shape_policy=placement.get("shapePolicy", "Strict"),
        aligned=bool(placement.get("alignedStart", False)),
        node_selector=selector,
        tolerations=tolerations,
        affinity=pod_spec.get("affinity"),
        numbering=numbering,
        requests=replica_requests(pod_spec, spec["coresPerReplica"], spec.get("processesPerReplica", 1)),
        volume_terms=volume_terms,
    )


def avoiding(request: PlacementRequest, nodes: frozenset[str]) -> PlacementRequest:
    """``request`` kept off ``nodes`` (where the replica's last attempts failed).

    Said the way Kubernetes says it, so the allocator needs no rule of its own: every required
    node-affinity term (they are ORed) also requires ``metadata.name NotIn nodes``. Only placement
    sees this; the pod carries the template's affinity.
    """
    if not nodes:
        return request
    excluded = {"key": NODE_NAME_FIELD, "operator": "NotIn", "values": sorted(nodes)}
    affinity = dict(request.affinity or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = [
        # An empty term matches no node, and must go on matching none.
        {**term, "matchFields": [*(term.get("matchFields") or ()), excluded]}
        if term.get("matchExpressions") or term.get("matchFields")
        else term
        for term in required.get("nodeSelectorTerms") or ()
    ]
    required["nodeSelectorTerms"] = terms or [{"matchFields": [excluded]}]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    affinity["nodeAffinity"] = node_affinity
    return dataclasses.replace(request, affinity=affinity)
