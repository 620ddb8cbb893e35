"""What one NeuronInference asks of every replica, and what placing a replica gives back.

A :class:`PlacementRequest` is validated when built (a malformed one raises ``ValueError``); placing
a replica (:mod:`.search`) gives a :class:`ReplicaPlacement` (a node and a core range) or an
:class:`Unplaceable` (a sentence saying why not, :mod:`.reasons`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from neuronplace.placement.constraints import required_terms, validate_toleration
from neuronplace.placement.names import NUMBERINGS, SHAPE_POLICIES, STRATEGIES
from neuronplace.placement.resources import check_items
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
