"""Where a replica's volumes let its pod run: the template's PersistentVolumeClaims (and generic
ephemeral volumes), their PersistentVolumes and StorageClasses → the nodes the pod can use there,
or why it cannot be placed now. Pure; the inputs are API objects as dicts (slimmed or whole).

This follows kube-scheduler's volume binding, so that a node placement picks is one the scheduler
and the kubelet can use:

- A claim **Bound** to a volume with required node affinity (a local disk, a zonal disk) can only
  be used on the nodes that affinity matches (its ``nodeSelectorTerms``, Kubernetes semantics).
- An **unbound** claim whose StorageClass binds ``WaitForFirstConsumer`` is bound by kube-scheduler
  when it binds the pod. With no provisioner (``kubernetes.io/no-provisioner``, pre-made local
  volumes) it can only go where some Available volume of its class has the access modes, volume
  mode and capacity it asks for; with a provisioner, where the class's ``allowedTopologies`` allow.
  A pod created with ``spec.nodeName`` never goes through the scheduler, so nothing ever binds such
  a claim: with Direct binding the replica is refused with its own reason.
- A missing claim, one being deleted, or an unbound claim of an ``Immediate`` class: kube-scheduler
  leaves the pod Pending until that changes, and the replica waits the same way, with the
  scheduler's words.

Every claim must hold: the result is one group of node-selector terms per claim that restricts
nodes (a node must match a term of every group). Left out, as they rarely decide a node: a claim's
label ``selector`` on volumes, volume attach limits per node, and two claims of one pod competing
for the same Available volume (the scheduler then reports the pod Unschedulable after binding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from neuronplace.placement.claims import NODE_NAME_FIELD, node_of
from neuronplace.placement.constraints import required_terms
from neuronplace.placement.names import (
    BINDING_DIRECT,
    REASON_UNSCHEDULABLE,
    REASON_VOLUME_NEEDS_SCHEDULER,
    TERMINAL_PHASES,
)
from neuronplace.placement.resources import parse_quantity

NO_PROVISIONER = "kubernetes.io/no-provisioner"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

Terms = tuple[Mapping[str, Any], ...]  # node selector terms, ORed


@dataclass(frozen=True)
class VolumeConstraint:
    """What a replica's volumes ask of its node.

    ``node_terms``: groups of node-selector terms; a node must match one term of every group.
    ``problem``: why no node can take the replica now (``reason`` is the status reason for it);
    ``None`` when the volumes allow placement.
    ``first_consumer``: a claim every replica shares waits for its first consumer on pre-made local
    volumes. kube-scheduler binds it to a volume on the node of the first replica it binds, and
    then no other node can use it: every replica goes where the first one went (:meth:`on_node`),
    rather than to another node with a free volume, where it could never be bound.
    """

    node_terms: tuple[Terms, ...] = ()
    problem: str | None = None
    reason: str = REASON_UNSCHEDULABLE
    first_consumer: bool = False

    def on_node(self, node: str) -> tuple[Terms, ...]:
        """``node_terms`` narrowed to ``node``."""
        return (*self.node_terms, ({"matchFields": [{"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}]},))


def claim_names(pod_spec: Mapping[str, Any]) -> frozenset[str]:
    """The PersistentVolumeClaims a pod spec names (generic ephemeral volumes make their own per pod)."""
    return frozenset(
        name
        for volume in pod_spec.get("volumes") or ()
        if isinstance(volume, Mapping)
        and isinstance(volume.get("persistentVolumeClaim"), Mapping)
        and (name := volume["persistentVolumeClaim"].get("claimName"))
    )


def volume_constraint(
    pod_spec: Mapping[str, Any],
    namespace: str,
    claims: Mapping[tuple[str, str], Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]],
    *,
    binding: str,
) -> VolumeConstraint:
    """The node constraint of the pod spec's volumes, for a pod in ``namespace`` bound by ``binding``.

    ``claims`` maps (namespace, name) to PersistentVolumeClaims, ``volumes`` and ``classes`` map
    names to PersistentVolumes and StorageClasses.
    """
    groups: list[Terms] = []
    first_consumer = False
    for volume in pod_spec.get("volumes") or ():
        if not isinstance(volume, Mapping):
            continue
        if isinstance(volume.get("persistentVolumeClaim"), Mapping):
            name = volume["persistentVolumeClaim"].get("claimName")
            claim = claims.get((namespace, name))
            if claim is None:
                return _waiting(f'persistentvolumeclaim "{name}" not found')
            if (claim.get("metadata") or {}).get("deletionTimestamp"):
                return _waiting(f'persistentvolumeclaim "{name}" is being deleted')
            outcome = _claim(claim, f'persistentvolumeclaim "{name}"', (namespace, name), volumes, classes, binding)
            first_consumer = first_consumer or _waits_on_local_volume(claim, classes)
        elif isinstance(volume.get("ephemeral"), Mapping):
            template = volume["ephemeral"].get("volumeClaimTemplate") or {}
            label = f'ephemeral volume "{volume.get("name")}"'
            outcome = _claim({"spec": template.get("spec") or {}}, label, None, volumes, classes, binding)
        else:
            continue
        if isinstance(outcome, VolumeConstraint):
            return outcome
        if outcome is not None:
            groups.append(outcome)
    return VolumeConstraint(node_terms=tuple(groups), first_consumer=first_consumer)


def consumer_node(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The node of a live pod among ``pods`` (bound, or pinned while kube-scheduler has yet to bind
    it): where a claim they share that waits for its first consumer is going to be bound."""
    for pod in pods:
        ended = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
        node = None if ended or (pod.get("metadata") or {}).get("deletionTimestamp") else node_of(pod)
        if node:
            return node
    return None


def _waiting(problem: str) -> VolumeConstraint:
    return VolumeConstraint(problem=problem)


def _claim(
    claim: Mapping[str, Any],
    label: str,
    key: tuple[str, str] | None,
    volumes: Mapping[str, Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]],
    binding: str,
) -> Terms | VolumeConstraint | None:
    """One claim's node terms (None: any node), or the constraint that stops the replica.

    ``key`` is the claim's (namespace, name); None for a generic ephemeral volume, whose claim the
    controller-manager creates only once the pod exists.
    """
    spec = claim.get("spec") or {}
    phase = (claim.get("status") or {}).get("phase")
    bound_to = spec.get("volumeName")
    if phase == "Bound" and bound_to:
        volume = volumes.get(bound_to)
        if volume is None:
            return _waiting(f'{label} is bound to persistentvolume "{bound_to}", which was not found')
        return _node_terms(volume, bound_to)
    if phase == "Lost":
        return _waiting(f'{label} lost its persistentvolume "{bound_to}"')
    class_name = _class_name(spec, classes)
    if not class_name:
        # No class: only the volume controller binds it (to a volume without a class), at once.
        return _waiting(f"pod has unbound immediate PersistentVolumeClaims ({label})") if key else None
    storage_class = classes.get(class_name)
    if storage_class is None:
        return _waiting(f'{label}: storageclass.storage.k8s.io "{class_name}" not found')
    if storage_class.get("volumeBindingMode") != WAIT_FOR_FIRST_CONSUMER:
        # A generic ephemeral volume's claim is created with the pod and bound at once, anywhere.
        return _waiting(f"pod has unbound immediate PersistentVolumeClaims ({label})") if key else None
    if binding == BINDING_DIRECT:
        return VolumeConstraint(
            problem=(
                f"{label} waits for its first consumer (storage class {class_name}, volumeBindingMode "
                "WaitForFirstConsumer): only kube-scheduler binds such a claim, and a pod bound directly "
                "(binding Direct) skips it. Use binding Scheduler, or bind the claim first"
            ),
            reason=REASON_VOLUME_NEEDS_SCHEDULER,
        )
    if storage_class.get("provisioner") != NO_PROVISIONER:
        return _topology_terms(storage_class.get("allowedTopologies"))
    candidates = [
        (name, volume)
        for name, volume in sorted(volumes.items())
        if (not bound_to or name == bound_to) and _can_bind(volume, spec, class_name, key)
    ]
    if not candidates:
        return _waiting(
            f"{label}: no Available persistentvolume of storage class {class_name} offers "
            f"{_wanted(spec)} (kube-scheduler: didn't find available persistent volumes to bind)"
        )
    terms: list[Mapping[str, Any]] = []
    for name, volume in candidates:
        outcome = _node_terms(volume, name)
        if isinstance(outcome, VolumeConstraint):
            return outcome
        if outcome is None:
            return None  # a volume usable on any node: no restriction
        terms.extend(term for term in outcome if term not in terms)
    return tuple(terms)


def _waits_on_local_volume(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether an unbound claim's class binds it at first consumer to a pre-made (local) volume."""
    if (claim.get("status") or {}).get("phase") == "Bound":
        return False
    storage_class = classes.get(_class_name(claim.get("spec") or {}, classes)) or {}
    return (
        storage_class.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER
        and storage_class.get("provisioner") == NO_PROVISIONER
    )


def _class_name(spec: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> str:
    """The claim's storage class; unset means the default class (admission, or the controller-manager
    later, assigns it), "" means none."""
    name = spec.get("storageClassName")
    if name is not None:
        return name
    defaults = sorted(
        class_name
        for class_name, storage_class in classes.items()
        if ((storage_class.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
    )
    return defaults[0] if defaults else ""


def _node_terms(volume: Mapping[str, Any], name: str) -> Terms | VolumeConstraint | None:
    required = ((volume.get("spec") or {}).get("nodeAffinity") or {}).get("required")
    if required is None:
        return None
    try:
        terms = required_terms({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}})
    except ValueError as error:
        return _waiting(f'persistentvolume "{name}" has a node affinity no node can match: {error}')
    return tuple(terms or ())


def _topology_terms(topologies: Any) -> Terms | None:
    """A class's ``allowedTopologies`` (label expressions, ``In`` only) as node selector terms."""
    if not topologies:
        return None
    return tuple(
        {
            "matchExpressions": [
                {"key": expression.get("key"), "operator": "In", "values": list(expression.get("values") or ())}
                for expression in (topology or {}).get("matchLabelExpressions") or ()
            ]
        }
        for topology in topologies
    )


def _can_bind(volume: Mapping[str, Any], spec: Mapping[str, Any], class_name: str, key: tuple[str, str] | None) -> bool:
    """Whether an unbound claim could be bound to ``volume`` (as the scheduler's volume binder matches)."""
    if (volume.get("status") or {}).get("phase") != "Available" or (volume.get("metadata") or {}).get(
        "deletionTimestamp"
    ):
        return False
    volume_spec = volume.get("spec") or {}
    reference = volume_spec.get("claimRef")
    if reference and (key is None or (reference.get("namespace"), reference.get("name")) != key):
        return False  # kept for another claim
    if (volume_spec.get("storageClassName") or "") != class_name:
        return False
    if (volume_spec.get("volumeMode") or "Filesystem") != (spec.get("volumeMode") or "Filesystem"):
        return False
    if not set(spec.get("accessModes") or ()) <= set(volume_spec.get("accessModes") or ()):
        return False
    try:
        capacity = parse_quantity((volume_spec.get("capacity") or {}).get("storage"))
        wanted = parse_quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage") or 0)
    except ValueError:  # the API server validates both: only a hand-made object lands here
        return False
    return capacity >= wanted


def _wanted(spec: Mapping[str, Any]) -> str:
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage") or "any size"
    modes = ", ".join(spec.get("accessModes") or ()) or "any access mode"
    return f"{storage} {modes} ({spec.get('volumeMode') or 'Filesystem'})"
