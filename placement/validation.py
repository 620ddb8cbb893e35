"""Whether a NeuronInference may be acted on at all (pure): its spec, and the namespace it is in.

The CRD's schema refuses most bad specs, but an object can get past it (an older CRD, a CRD
installed without validation, a hand-edited stored object), so the operator checks again before it
creates any pod from it, and says what is wrong instead of failing later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from neuronplace.placement.crd import MAX_CORES_PER_REPLICA, MAX_REPLICAS, MAX_TEMPLATE_BYTES
from neuronplace.placement.moves import max_unavailable_error
from neuronplace.placement.names import BINDINGS, SHAPE_POLICIES, STRATEGIES, UNHEALTHY_ACTIONS
from neuronplace.placement.podsecurity import BASELINE, TemplatePolicy, check_template
from neuronplace.placement.reserved import reserved_in_template


def _int(value: Any, default: int | None = None) -> int | None:
    if value is None:
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def template_bytes(template: Mapping, processes: int) -> int:
    """The template's size as compact JSON, its first container counted once per process: the part
    of every pod that comes from the template (each process gets a copy of that container)."""
    containers = (template.get("spec") or {}).get("containers") or [{}]
    return _json_bytes(template) + (processes - 1) * _json_bytes(containers[0])


def validate(inference: Mapping[str, Any], policy: TemplatePolicy = BASELINE) -> str | None:
    """Why the inference cannot be acted on, or None.

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
    if placement.get("binding", BINDINGS[0]) not in BINDINGS:
        return f"spec.placement.binding must be one of {', '.join(BINDINGS)}, got {placement.get('binding')!r}"
    if placement.get("shapePolicy", "Strict") not in SHAPE_POLICIES:
        return f"spec.placement.shapePolicy must be one of {', '.join(SHAPE_POLICIES)}, got {placement.get('shapePolicy')!r}"
    selector = placement.get("nodeSelector", {}) or {}
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        return "spec.placement.nodeSelector must map label keys to string values"
    tolerations = placement.get("tolerations", []) or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        return "spec.placement.tolerations must be a list of tolerations"
    unhealthy = placement.get("unhealthyNodes", {}) or {}
    if not isinstance(unhealthy, Mapping):
        return "spec.placement.unhealthyNodes must be an object"
    if unhealthy.get("action", UNHEALTHY_ACTIONS[0]) not in UNHEALTHY_ACTIONS:
        return (
            f"spec.placement.unhealthyNodes.action must be one of {', '.join(UNHEALTHY_ACTIONS)}, "
            f"got {unhealthy.get('action')!r}"
        )
    if "maxUnavailable" in unhealthy and (error := max_unavailable_error(unhealthy["maxUnavailable"])):
        return error
    template = spec.get("template")
    if not isinstance(template, Mapping) or not isinstance(template.get("spec"), Mapping):
        return "spec.template.spec.containers must list at least one container"
    pod_spec = template["spec"]
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.template.spec.containers must list at least one container"
    if not all(isinstance(c, Mapping) and isinstance(c.get("name"), str) and c.get("name") for c in containers):
        return "every container in spec.template.spec.containers needs a name"
    if pod_spec.get("nodeName") or pod_spec.get("schedulerName"):
        return "spec.template.spec must not set nodeName or schedulerName: the operator binds pods itself"
    reserved = reserved_in_template(template)
    if reserved:
        return reserved
    size = template_bytes(template, processes)
    if size > MAX_TEMPLATE_BYTES:
        return (
            f"spec.template is {size} bytes as JSON (its first container counted once per process), over the "
            f"limit of {MAX_TEMPLATE_BYTES}: move large data into a ConfigMap or volume"
        )
    violations = check_template(template, policy, namespace=(inference.get("metadata") or {}).get("namespace"))
    if violations:
        return "pod template refused: " + "; ".join(violations)
    return None


def namespace_refusal(namespace: str | None, operator_namespace: str, serve_operator_namespace: bool) -> str | None:
    """Why an inference in ``namespace`` gets no pods, or None.

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
