"""The level-driven decision for one NeuronInference: desired spec vs live pods → actions (pure).

``decide()`` never talks to the API and never places anything: it says which pods must go and
which replica ordinals need a pod. The handlers then place the missing ordinals (serialised, in
the placement engine), create the pods, delete the listed ones and write the status.

Rules:
- replicas ``0..replicas-1`` each have exactly one pod ``<name>-<ordinal>``; missing ones are created;
- surplus replicas are deleted, highest ordinal first;
- a Failed/Succeeded pod is deleted and recreated (on the same cores when still free);
- a pod whose node is gone, or NotReady for longer than the grace period, is deleted and re-placed;
- a pod from an older spec (template hash) is replaced one replica at a time, and only while every
  other replica is available; a not-ready outdated pod may go at once (it serves nothing).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.placement.allocator import PlacementRequest
from neuronplace.placement.conditions import condition
from neuronplace.placement.crd import MAX_CORES_PER_REPLICA, MAX_REPLICAS
from neuronplace.placement.names import (
    CONDITION_READY,
    CORES_ANNOTATION,
    SHAPE_POLICIES,
    STRATEGIES,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.pods import template_hash
from neuronplace.placement.podsecurity import BASELINE, TemplatePolicy, check_template
from neuronplace.placement.status import pod_is_ready
from neuronplace.runtime.coreset import CoreRange

# Deletion reasons (also the Event reasons the handlers post).
SURPLUS = "ScaledDown"
FAILED = "PodFailed"
NODE_GONE = "NodeGone"
NODE_NOT_READY = "NodeNotReady"
OUTDATED = "RollingUpdate"
STRAY = "StrayPod"


@dataclass(frozen=True)
class Deletion:
    pod: str
    reason: str
    message: str
    force: bool = False  # grace period 0: the node cannot run the pod's shutdown anyway


@dataclass(frozen=True)
class Decision:
    invalid: str | None = None  # spec problem: no pods are created, condition says why
    deletions: tuple[Deletion, ...] = ()
    create: tuple[int, ...] = ()  # ordinals that need a pod, in order
    prefer: Mapping[int, tuple[str, CoreRange]] = field(default_factory=dict)  # keep these cores if free
    requeue_after: float | None = None  # look again then even without events


def _int(value: Any, default: int | None = None) -> int | None:
    if value is None:
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def validate(inference: Mapping[str, Any], policy: TemplatePolicy = BASELINE) -> str | None:
    """Why the resource cannot be acted on, or None.

    Mirrors the CRD's rules for objects that got past them (an older CRD, a CRD installed without
    validation, a hand-edited stored object), then applies the pod-template safety policy
    (``podsecurity.check_template``): the operator never creates a pod its user could not.
    """
    spec = inference.get("spec")
    if not isinstance(spec, Mapping):
        return "spec is missing or not an object"
    replicas = _int(spec.get("replicas"), 1)
    if replicas is None or not 0 <= replicas <= MAX_REPLICAS:
        return f"spec.replicas must be an integer in 0..{MAX_REPLICAS}, got {spec.get('replicas')!r}"
    cores = _int(spec.get("coresPerReplica"))
    if cores is None or not 1 <= cores <= MAX_CORES_PER_REPLICA:
        return f"spec.coresPerReplica must be an integer in 1..{MAX_CORES_PER_REPLICA}, got {spec.get('coresPerReplica')!r}"
    processes = _int(spec.get("processesPerReplica"), 1)
    if processes is None or processes < 1 or cores % processes:
        return (
            f"spec.processesPerReplica must be a positive integer dividing coresPerReplica={cores}, "
            f"got {spec.get('processesPerReplica')!r}"
        )
    placement = spec.get("placement", {}) or {}
    if not isinstance(placement, Mapping):
        return "spec.placement must be an object"
    if placement.get("strategy", "BinPack") not in STRATEGIES:
        return f"spec.placement.strategy must be one of {', '.join(STRATEGIES)}, got {placement.get('strategy')!r}"
    if placement.get("shapePolicy", "Strict") not in SHAPE_POLICIES:
        return f"spec.placement.shapePolicy must be one of {', '.join(SHAPE_POLICIES)}, got {placement.get('shapePolicy')!r}"
    selector = placement.get("nodeSelector", {}) or {}
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        return "spec.placement.nodeSelector must map label keys to string values"
    tolerations = placement.get("tolerations", []) or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        return "spec.placement.tolerations must be a list of tolerations"
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, Mapping) else None
    if not isinstance(pod_spec, Mapping):
        return "spec.template.spec.containers must list at least one container"
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.template.spec.containers must list at least one container"
    if not all(isinstance(c, Mapping) and isinstance(c.get("name"), str) and c.get("name") for c in containers):
        return "every container in spec.template.spec.containers needs a name"
    if pod_spec.get("nodeName") or pod_spec.get("schedulerName"):
        return "spec.template.spec must not set nodeName or schedulerName: the operator binds pods itself"
    violations = check_template(template, policy, namespace=(inference.get("metadata") or {}).get("namespace"))
    if violations:
        return "pod template refused: " + "; ".join(violations)
    return None


def namespace_refusal(namespace: str | None, operator_namespace: str, serve_operator_namespace: bool) -> str | None:
    """Why a resource in ``namespace`` gets no pods, or None.

    The operator's own namespace holds its ServiceAccount token, which may create pods in every
    served namespace: a pod made there from a user's template could mount that token (every
    ServiceAccount and Secret of a namespace is open to the pods created in it). So that namespace
    is not served unless the setting says so; an empty ``operator_namespace`` (an operator run
    outside the cluster) refuses nothing.
    """
    if not operator_namespace or namespace != operator_namespace or serve_operator_namespace:
        return None
    return (
        f"namespace {namespace} is the operator's own namespace, where its ServiceAccount's credentials live; "
        "the operator creates no pods here. Create the NeuronInference in another namespace (or, if every user "
        "who may create NeuronInferences here may also act as the operator, set "
        "NEURONPLACE_SERVE_OPERATOR_NAMESPACE=true)"
    )


_ORDINAL = re.compile(r"^(0|[1-9][0-9]*)$")


def ordinal_of(pod: Mapping[str, Any], inference_name: str) -> int | None:
    """The replica ordinal of a pod named ``<name>-<ordinal>``, or None for any other name."""
    name = (pod.get("metadata") or {}).get("name", "")
    prefix = inference_name + "-"
    if not name.startswith(prefix) or not _ORDINAL.match(name[len(prefix) :]):
        return None
    return int(name[len(prefix) :])


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        # RFC 3339 as the API server writes it ("...Z"), or as the client library re-serialises
        # it ("...+00:00"); a stamp without a zone is UTC.
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def node_not_ready_since(node: Mapping[str, Any]) -> dt.datetime | None:
    """When the node's Ready condition last turned False/Unknown; None while it is Ready.

    A node without a Ready condition (just registered) counts as Ready here: the placement engine's
    inventory decides whether new replicas may go there.
    """
    ready = condition(node, CONDITION_READY)
    if not ready or ready.get("status") == "True":
        return None
    return _parse_time(ready.get("lastTransitionTime")) or dt.datetime.min.replace(tzinfo=dt.UTC)


def _owned_by(pod: Mapping[str, Any], uid: str | None) -> bool:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return True
    return False


def _cores_of(pod: Mapping[str, Any]) -> CoreRange | None:
    try:
        return CoreRange.parse(((pod.get("metadata") or {}).get("annotations") or {})[CORES_ANNOTATION])
    except (KeyError, ValueError, TypeError):
        return None


def decide(
    inference: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    now: dt.datetime,
    node_grace_seconds: float,
    last_known: Mapping[int, tuple[str, CoreRange]] | None = None,
    policy: TemplatePolicy = BASELINE,
) -> Decision:
    """What to do next for ``inference`` given the pods labelled with its name and all known nodes.

    ``last_known`` maps ordinals to the (node, cores) their previous pod held, so a recreated replica
    asks for the same cores.
    """
    problem = validate(inference, policy)
    if problem is not None:
        return Decision(invalid=problem)
    meta = inference["metadata"]
    spec = inference["spec"]
    name, uid = meta["name"], meta.get("uid")
    desired = _int(spec.get("replicas"), 1) or 0  # validate() refused anything but a whole number ≥ 0
    cores_per_replica = spec["coresPerReplica"]
    wanted_hash = template_hash(spec)

    prefer: dict[int, tuple[str, CoreRange]] = {}
    for known_ordinal, (known_node, known_cores) in (last_known or {}).items():
        if known_cores.count == cores_per_replica:
            prefer[known_ordinal] = (known_node, known_cores)

    deletions: list[Deletion] = []
    occupied: set[int] = set()  # ordinals whose pod name is taken (by any pod, ours or not)
    current: dict[int, Mapping] = {}  # live, kept pods of ours by ordinal
    requeue: float | None = None
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        ordinal = ordinal_of(pod, name)
        if ordinal is not None:
            occupied.add(ordinal)
        if not _owned_by(pod, uid):
            continue  # an older incarnation's pod: garbage collection removes it; its name waits
        if pod_meta.get("deletionTimestamp"):
            continue
        this_pod = pod_meta.get("name", "")
        if ordinal is None:
            deletions.append(Deletion(this_pod, STRAY, f"pod {this_pod} is not named {name}-<ordinal>"))
            continue
        if ordinal >= desired:
            deletions.append(Deletion(this_pod, SURPLUS, f"replica {ordinal} is beyond replicas={desired}"))
            continue
        phase = (pod.get("status") or {}).get("phase")
        node_name = (pod.get("spec") or {}).get("nodeName")
        cores = _cores_of(pod)
        if phase in ("Failed", "Succeeded"):
            deletions.append(Deletion(this_pod, FAILED, f"pod {this_pod} ended ({phase}); recreating it"))
            if node_name and cores and cores.count == cores_per_replica:
                prefer[ordinal] = (node_name, cores)
            continue
        node = nodes.get(node_name) if node_name else None
        if node is None:
            deletions.append(
                Deletion(this_pod, NODE_GONE, f"node {node_name!r} of pod {this_pod} is gone; re-placing", force=True)
            )
            prefer.pop(ordinal, None)
            continue
        since = node_not_ready_since(node)
        if since is not None:
            waited = (now - since).total_seconds()
            if waited >= node_grace_seconds:
                deletions.append(
                    Deletion(
                        this_pod,
                        NODE_NOT_READY,
                        f"node {node_name} NotReady for {int(waited)}s (grace {int(node_grace_seconds)}s); re-placing",
                        force=True,
                    )
                )
                prefer.pop(ordinal, None)
                continue
            remaining = max(node_grace_seconds - waited, 0.5)
            requeue = remaining if requeue is None else min(requeue, remaining)
        if node_name and cores is not None and cores.count == cores_per_replica:
            prefer[ordinal] = (node_name, cores)
        current[ordinal] = pod

    # Surplus goes highest ordinal first.
    deletions.sort(key=lambda d: (d.reason != SURPLUS, -(ordinal_of({"metadata": {"name": d.pod}}, name) or 0)))
    create = tuple(i for i in range(desired) if i not in occupied)

    rollout = _next_rollout(current, desired, wanted_hash)
    if rollout is not None:
        deletions.append(rollout)
    return Decision(deletions=tuple(deletions), create=create, prefer=prefer, requeue_after=requeue)


def _next_rollout(current: Mapping[int, Mapping], desired: int, wanted_hash: str) -> Deletion | None:
    """At most one outdated pod to replace now (one replica at a time).

    Nothing is replaced while any replica in ``0..desired-1`` lacks a live pod (missing, being
    deleted, or deleted in this pass). Then a not-ready outdated pod goes first (it serves nothing);
    otherwise the highest outdated ordinal goes once every replica is ready.
    """
    outdated = [
        i
        for i, pod in current.items()
        if ((pod.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) != wanted_hash
    ]
    if not outdated or any(i not in current for i in range(desired)):
        return None
    not_ready = [i for i in outdated if not pod_is_ready(current[i])]
    if not_ready:
        chosen = max(not_ready)
    elif all(pod_is_ready(pod) for pod in current.values()):
        chosen = max(outdated)
    else:
        return None
    pod_name = current[chosen]["metadata"]["name"]
    return Deletion(pod_name, OUTDATED, f"pod {pod_name} runs an older spec; replacing it (one replica at a time)")


def placement_request(inference: Mapping[str, Any], numbering: str) -> PlacementRequest:
    """The placement engine's request for a (validated) resource.

    The template's own nodeSelector, tolerations and required node affinity are honoured together
    with ``spec.placement``'s: the pod carries both, so the node must satisfy both.
    """
    meta = inference["metadata"]
    spec = inference["spec"]
    placement = spec.get("placement") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    selector = dict(pod_spec.get("nodeSelector") or {})
    selector.update(placement.get("nodeSelector") or {})
    tolerations = tuple(pod_spec.get("tolerations") or ()) + tuple(placement.get("tolerations") or ())
    return PlacementRequest(
        owner=f"{meta['namespace']}/{meta['name']}",
        cores_per_replica=spec["coresPerReplica"],
        processes_per_replica=spec.get("processesPerReplica", 1),
        strategy=placement.get("strategy", "BinPack"),
        shape_policy=placement.get("shapePolicy", "Strict"),
        aligned=bool(placement.get("alignedStart", False)),
        node_selector=selector,
        tolerations=tolerations,
        affinity=pod_spec.get("affinity"),
        numbering=numbering,
    )
