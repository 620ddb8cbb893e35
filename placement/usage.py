"""Requested resources per node, summed over the pods there. Pure; never raises on pod data.

The counterpart of the core ledger for everything else a pod asks of its node (cpu, memory,
ephemeral-storage, hugepages, extended resources, one pod slot), counted as kube-scheduler counts a
node's ``Requested``: every pod that is bound (``spec.nodeName``) or pinned to the node
(:func:`claims.node_of`) and has not finished, ours and foreign alike, with
:func:`resources.pod_requests`; but not a pinned pod kube-scheduler will not bind there (scheduling
gates, or a request beyond the node's allocatable when the caller knows it), as the ledger does not. A pod being deleted still counts until it is gone: its containers
may still run. A replica placed but not yet seen as a pod counts through :meth:`Usage.reserve`
until its pod's first event replaces the reservation (same pod) or it is forgotten. Capacity
requests (:func:`claims.capacity_request`) count nowhere: kube-scheduler counts one where it bound
it, but it is deleted before the replica it stands for is created there, and any other capacity
request in the way is deleted (or preempted: its priority is below every replica's) before it matters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from neuronplace.placement.claims import capacity_request, gated, key_of, node_of
from neuronplace.placement.names import TERMINAL_PHASES
from neuronplace.placement.resources import PODS, Amounts, pod_requests

_NOTHING: Mapping[str, int] = {}


class Usage:
    """What the pods on each node request in total, kept up to date one pod event at a time."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Amounts]] = {}  # pod key ("ns/name") → (node, its requests)
        self._used: dict[str, dict[str, int]] = {}  # node → resource → requested in total
        self._versions: dict[str, int] = {}  # node → how many times what it holds has changed

    @classmethod
    def from_pods(cls, pods: Iterable[Mapping]) -> Usage:
        usage = cls()
        for pod in pods:
            usage.observe(pod)
        return usage

    def observe(self, pod: Mapping, allocatable: Mapping[str, int] | None = None) -> None:
        """Add or update one pod (idempotent); a finished or unplaced pod, a capacity request, or a
        pinned pod that cannot be bound (gated, or beyond ``allocatable``: its node's) is forgotten."""
        node = node_of(pod)
        key = key_of(pod)
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES or capacity_request(pod):
            self.forget(key)
            return
        requests = pod_requests(pod.get("spec") or {})
        bound = bool((pod.get("spec") or {}).get("nodeName"))
        too_big = allocatable is not None and any(v > allocatable.get(r, 0) for r, v in requests.items())
        if not bound and (gated(pod) or too_big):
            self.forget(key)
            return
        requests[PODS] = 1
        self._put(key, node, requests)

    def reserve(self, node: str, pod: str, requests: Amounts) -> None:
        """Count ``requests`` (and one pod slot) on ``node`` for the pod ``pod`` before it exists."""
        self._put(pod, node, {**requests, PODS: 1})

    def forget(self, pod: str) -> None:
        """The pod ``pod`` is gone, finished, or its reservation was given back."""
        held = self._held.pop(pod, None)
        if held is None:
            return
        node, requests = held
        self._versions[node] += 1
        used = self._used[node]
        for name, value in requests.items():
            left = used.get(name, 0) - value
            if left:
                used[name] = left
            else:
                used.pop(name, None)
        if not used:
            del self._used[node]

    def used(self, node: str) -> Mapping[str, int]:
        """Requested in total on ``node`` by resource, ``pods`` = the number of pods (do not modify)."""
        return self._used.get(node, _NOTHING)

    def version(self, node: str) -> int:
        """Changes whenever what is counted on ``node`` changes (lets a caller remember a refusal)."""
        return self._versions.get(node, 0)

    def held_by(self, pod: str) -> tuple[str, Amounts] | None:
        """(node, requests) counted for ``pod``, or None."""
        return self._held.get(pod)

    def pods(self) -> set[str]:
        """Every pod ("namespace/name") counted or reserved."""
        return set(self._held)

    def nodes(self) -> list[str]:
        """Nodes on which anything is counted."""
        return sorted(self._used)

    def _put(self, pod: str, node: str, requests: Amounts) -> None:
        self.forget(pod)
        self._held[pod] = (node, dict(requests))
        self._versions[node] = self._versions.get(node, 0) + 1
        used = self._used.setdefault(node, {})
        for name, value in requests.items():
            used[name] = used.get(name, 0) + value
