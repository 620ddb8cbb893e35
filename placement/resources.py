"""Node resources the way kube-scheduler's NodeResourcesFit counts them. Pure.

Quantities become exact integers: cpu in millicores, everything else in whole units (bytes for
memory, ephemeral-storage and hugepages), rounded up as the API's ``Quantity.MilliValue`` and
``Value`` round. Only the resources the scheduler checks are kept: ``cpu``, ``memory``,
``ephemeral-storage`` and the scalar ones (``hugepages-*``, ``attachable-volumes-*`` and every
prefixed name such as ``aws.amazon.com/neuroncore``). ``pods`` is a count: every pod takes one.

A pod's request (:func:`pod_requests`) is what the scheduler and the kubelet's admission count:
the larger of (app containers + restartable init containers, i.e. sidecars) and, for each other
init container, its own request plus the sidecars started before it; then pod-level requests
(``spec.resources``) replace cpu, memory and hugepages when set, and ``spec.overhead`` is added.
A container that sets only limits requests its limits (the API server defaults them so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from neuronplace.placement.names import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE

CPU = "cpu"
MEMORY = "memory"
EPHEMERAL_STORAGE = "ephemeral-storage"
PODS = "pods"
HUGEPAGES_PREFIX = "hugepages-"
# The order in which kube-scheduler checks a pod against a node; scalar resources follow by name.
CHECK_ORDER = (PODS, CPU, MEMORY, EPHEMERAL_STORAGE)

Amounts = Mapping[str, int]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": Fraction(1)}
_DECIMAL.update({"k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12)})
_DECIMAL.update({"P": Fraction(10**15), "E": Fraction(10**18)})
_QUANTITY = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?\d{1,3}))?$")


def parse_quantity(text: object) -> Fraction:
    """A Kubernetes quantity ("150", "100m", "1.5Gi", "1e3") as an exact number.

    Raises ``ValueError`` for anything the API server would refuse.
    """
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"quantity {text!r} is not a string or an integer")
    if isinstance(text, int):
        return Fraction(text)
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"quantity {text!r} is not a Kubernetes quantity (e.g. 150, 100m, 1.5Gi, 1e3)")
    sign, number, suffix, exponent = match.groups()
    value = Fraction(number)
    if exponent is not None:
        value *= Fraction(10) ** int(exponent)
    elif suffix in _BINARY:
        value *= _BINARY[suffix]
    else:
        value *= _DECIMAL[suffix or ""]
    return -value if sign == "-" else value


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


def amount(resource: str, quantity: object) -> int:
    """The integer the scheduler compares: millicores for cpu, whole units (rounded up) otherwise."""
    value = parse_quantity(quantity)
    return _ceil(value * 1000 if resource == CPU else value)


def counted(resource: str) -> bool:
    """Whether kube-scheduler checks this resource against a node's allocatable."""
    if resource in (CPU, MEMORY, EPHEMERAL_STORAGE):
        return True
    if resource.startswith((HUGEPAGES_PREFIX, "attachable-volumes-")):
        return True
    # Extended (example.com/thing) and prefixed native (*kubernetes.io/thing) names; the API
    # forbids other unprefixed names in requests.
    return "/" in resource and not resource.startswith("requests.")


def _amounts(resources: Mapping | None) -> dict[str, int]:
    """Counted resources of one ResourceList; quantities that do not parse are left out (the API
    server refuses such a pod with its own message, so placement need not second-guess it)."""
    result: dict[str, int] = {}
    for name, quantity in (resources or {}).items():
        if isinstance(name, str) and counted(name):
            try:
                result[name] = amount(name, quantity)
            except ValueError:
                continue
    return result


def container_requests(container: Mapping) -> dict[str, int]:
    """A container's requests, each missing one defaulted to its limit as the API server does."""
    resources = container.get("resources") or {}
    limits = _amounts(resources.get("limits"))
    limits.update(_amounts(resources.get("requests")))
    return limits


def _add(total: dict[str, int], more: Amounts) -> None:
    for name, value in more.items():
        total[name] = total.get(name, 0) + value


def _max(total: dict[str, int], other: Amounts) -> None:
    for name, value in other.items():
        if value > total.get(name, 0):
            total[name] = value


def _pod_level(resources: Mapping | None, containers: Amounts) -> dict[str, int]:
    """Pod-level requests (cpu, memory, hugepages) as the API server defaults them: a limit stands
    for a missing request unless the containers request that resource themselves."""
    requests = _amounts((resources or {}).get("requests"))
    limits = _amounts((resources or {}).get("limits"))
    result = {}
    for name in (*limits, *requests):
        if name in (CPU, MEMORY) or name.startswith(HUGEPAGES_PREFIX):
            if name in requests:
                result[name] = requests[name]
            elif name not in containers or name.startswith(HUGEPAGES_PREFIX):
                result[name] = limits[name]
    return result


def pod_requests(spec: Mapping) -> dict[str, int]:
    """What a pod with this spec requests of its node (kube-scheduler's PodRequests)."""
    total: dict[str, int] = {}
    for container in spec.get("containers") or ():
        if isinstance(container, Mapping):
            _add(total, container_requests(container))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for container in spec.get("initContainers") or ():
        if not isinstance(container, Mapping):
            continue
        own = container_requests(container)
        if container.get("restartPolicy") == "Always":  # a sidecar: runs beside the app containers
            _add(total, own)
            _add(sidecars, own)
            _max(init_peak, sidecars)
        else:  # runs to completion, beside the sidecars started before it
            running = dict(sidecars)
            _add(running, own)
            _max(init_peak, running)
    _max(total, init_peak)
    total.update(_pod_level(spec.get("resources"), total))
    _add(total, _amounts(spec.get("overhead")))
    return {name: value for name, value in total.items() if value}


def replica_requests(template_spec: Mapping, cores_per_replica: int, processes: int) -> dict[str, int]:
    """The requests of a replica pod as ``pods.build_pod`` builds it from the template's spec.

    The first container runs once per process and requests ``cores_per_replica / processes``
    NeuronCores each; every other container (and every init container) loses its Neuron resources.
    """

    def without_neuron(container: Mapping) -> dict:
        resources = container.get("resources") or {}
        return {
            "resources": {
                # Every Neuron resource name starts with the device resource's name.
                kind: {k: v for k, v in (resources.get(kind) or {}).items() if not k.startswith(NEURON_DEVICE_RESOURCE)}
                for kind in ("requests", "limits")
            },
            "restartPolicy": container.get("restartPolicy"),
        }

    containers = [c for c in template_spec.get("containers") or () if isinstance(c, Mapping)]
    each = str(cores_per_replica // processes)
    first = without_neuron(containers[0]) if containers else {"resources": {"requests": {}, "limits": {}}}
    for kind in ("requests", "limits"):
        first["resources"][kind][NEURONCORE_RESOURCE] = each
    spec = dict(template_spec)
    spec["containers"] = [first] * processes + [without_neuron(c) for c in containers[1:]]
    spec["initContainers"] = [
        without_neuron(c) for c in template_spec.get("initContainers") or () if isinstance(c, Mapping)
    ]
    return pod_requests(spec)


def node_allocatable(node: Mapping) -> dict[str, int]:
    """A Node's ``status.allocatable`` of the counted resources and ``pods``; absent means 0."""
    allocatable = ((node.get("status") or {}).get("allocatable")) or {}
    result = _amounts(allocatable)
    try:
        result[PODS] = amount(PODS, allocatable.get(PODS, 0))
    except ValueError:
        result[PODS] = 0
    return result


# ---- fit ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shortfall:
    """One resource a node cannot give a pod: the pod's request, the node's in use and allocatable."""

    resource: str
    requested: int
    used: int
    allocatable: int

    def describe(self, node: str) -> str:
        free = max(self.allocatable - self.used, 0)
        return (
            f"{node}: insufficient {self.resource} (requested {format_amount(self.resource, self.requested)}, "
            f"{format_amount(self.resource, free)} of {format_amount(self.resource, self.allocatable)} free)"
        )


def check_items(requests: Amounts) -> tuple[tuple[str, int], ...]:
    """The (resource, amount) pairs to check, in kube-scheduler's order: one pod slot always; a
    resource requested at 0 is never checked.

    Neuron resources are left to the core ledger: it holds at least as many of a node's usable
    cores (at most its allocatable ``neuroncore``) as the pods there request, core by core, and its
    refusal says which cores are free, which a count cannot.
    """
    scalars = sorted(
        name for name in requests if name not in CHECK_ORDER and not name.startswith(NEURON_DEVICE_RESOURCE)
    )
    ordered = [(PODS, 1)] + [(name, requests[name]) for name in (*CHECK_ORDER[1:], *scalars) if name in requests]
    return tuple((name, value) for name, value in ordered if value > 0)


def shortfall(items: tuple[tuple[str, int], ...], allocatable: Amounts, used: Amounts) -> Shortfall | None:
    """The first resource (in :func:`check_items` order) the node cannot give, or None when it fits."""
    for name, value in items:
        in_use = used.get(name, 0)
        if value > allocatable.get(name, 0) - in_use:
            return Shortfall(name, value, in_use, allocatable.get(name, 0))
    return None


def format_amount(resource: str, value: int) -> str:
    """An amount as a person writes it: cpu in cores ("150", "250m"), bytes with a binary suffix."""
    if resource == CPU:
        return str(value // 1000) if value % 1000 == 0 else f"{value}m"
    if resource in (MEMORY, EPHEMERAL_STORAGE) or resource.startswith(HUGEPAGES_PREFIX):
        for suffix, size in reversed(_BINARY.items()):
            if value and value % size == 0:
                return f"{value // size}{suffix}"
    return str(value)
