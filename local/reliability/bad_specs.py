"""A corpus of invalid NeuronInference specs and what must be said about each (data; no cluster).

``API_REJECTED``: specs the API server must refuse at create time (OpenAPI schema, CEL rules and
object-name validation from ``crds/neuronplace.io_neuroninferences.yaml``), each with a piece of
the message the user must see. ``OPERATOR_REFUSED``: specs that pass the schema but that the
operator must refuse with ``Placed=False`` and a reason instead of creating pods; each needs the
fleet of :data:`OPERATOR_FLEET`.

Every case starts from :func:`valid` and changes one thing, so each one fails for exactly its own
reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from neuronplace.local.manifests import inference


def valid(name: str = "model", pool: str | None = None) -> dict:
    return inference(name, cores=4, processes=2, pool=pool, strategy=None, labels={})


@dataclass(frozen=True)
class BadSpec:
    id: str
    change: Callable[[dict], None]
    says: tuple[str, ...]  # every one of these must appear in the message / condition
    reason: str | None = None  # for OPERATOR_REFUSED: the Placed condition's reason

    def build(self, name: str, pool: str | None = None) -> dict:
        resource = copy.deepcopy(valid(name, pool))
        self.change(resource)
        return resource


def _spec(**values) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["spec"].update(values)

    return change


def _placement(**values) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["spec"]["placement"].update(values)

    return change


def _pod_spec(**values) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["spec"]["template"]["spec"].update(values)

    return change


def _container(**values) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["spec"]["template"]["spec"]["containers"][0].update(values)

    return change


def _data_parallel(**values) -> Callable[[dict], None]:
    return _spec(dataParallel=values)


def _drop(*path: str) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        target = resource
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


def _name(name: str) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["metadata"]["name"] = name

    return change


def _sequence(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        for each in changes:
            each(resource)

    return change


NEURON_RESOURCE_MESSAGE = "must not request Neuron resources"
RESERVED_ENV_MESSAGE = "must not set NEURON_RT_VISIBLE_CORES or NEURON_RT_NUM_CORES"
DIVISIBLE_MESSAGE = "coresPerReplica must be divisible by processesPerReplica"

API_REJECTED: tuple[BadSpec, ...] = (
    # counts
    BadSpec("replicas-negative", _spec(replicas=-1), ("spec.replicas", "greater than or equal to 0")),
    BadSpec("replicas-over-maximum", _spec(replicas=1001), ("spec.replicas", "less than or equal to 1000")),
    BadSpec("replicas-huge", _spec(replicas=10**15), ("spec.replicas", "less than or equal to 1000")),
    BadSpec("replicas-string", _spec(replicas="three"), ("spec.replicas", "must be of type integer")),
    BadSpec("replicas-fraction", _spec(replicas=1.5), ("spec.replicas", "must be of type integer")),
    BadSpec("replicas-boolean", _spec(replicas=True), ("spec.replicas", "must be of type")),
    BadSpec("cores-zero", _spec(coresPerReplica=0), ("spec.coresPerReplica", "greater than or equal to 1")),
    BadSpec("cores-negative", _spec(coresPerReplica=-4), ("spec.coresPerReplica", "greater than or equal to 1")),
    BadSpec(
        "cores-more-than-any-node",
        _spec(coresPerReplica=129, processesPerReplica=1),
        ("spec.coresPerReplica", "less than or equal to 128"),
    ),
    BadSpec(
        "cores-huge",
        _spec(coresPerReplica=2**40, processesPerReplica=1),
        ("spec.coresPerReplica", "less than or equal to 128"),
    ),
    BadSpec("cores-string", _spec(coresPerReplica="4"), ("spec.coresPerReplica", "must be of type integer")),
    BadSpec("cores-missing", _drop("spec", "coresPerReplica"), ("spec.coresPerReplica", "Required value")),
    BadSpec("processes-zero", _spec(processesPerReplica=0), ("spec.processesPerReplica", "greater than or equal to 1")),
    BadSpec(
        "processes-negative", _spec(processesPerReplica=-2), ("spec.processesPerReplica", "greater than or equal to 1")
    ),
    BadSpec("processes-not-dividing", _spec(processesPerReplica=3), (DIVISIBLE_MESSAGE,)),
    BadSpec("processes-more-than-cores", _spec(processesPerReplica=8), (DIVISIBLE_MESSAGE,)),
    # placement
    BadSpec(
        "strategy-unknown", _placement(strategy="Random"), ("spec.placement.strategy", "Unsupported value", '"Random"')
    ),
    BadSpec("strategy-wrong-case", _placement(strategy="binpack"), ("spec.placement.strategy", "Unsupported value")),
    BadSpec(
        "shape-policy-unknown", _placement(shapePolicy="Loose"), ("spec.placement.shapePolicy", "Unsupported value")
    ),
    BadSpec(
        "selector-not-a-map",
        _placement(nodeSelector="neuron=true"),
        ("spec.placement.nodeSelector", "must be of type object"),
    ),
    BadSpec(
        "selector-value-number",
        _placement(nodeSelector={"zone": 1}),
        ("spec.placement.nodeSelector.zone", "must be of type string"),
    ),
    BadSpec(
        "tolerations-not-a-list",
        _placement(tolerations="kwok.x-k8s.io/node"),
        ("spec.placement.tolerations", "must be of type array"),
    ),
    BadSpec(
        "toleration-exists-with-value",
        _placement(tolerations=[{"key": "a", "operator": "Exists", "value": "x"}]),
        ("operator Exists must not have a value",),
    ),
    BadSpec(
        "toleration-operator-unknown",
        _placement(tolerations=[{"key": "a", "operator": "In"}]),
        ("spec.placement.tolerations[0].operator", "Unsupported value"),
    ),
    BadSpec(
        "aligned-start-string",
        _placement(alignedStart="true"),
        ("spec.placement.alignedStart", "must be of type boolean"),
    ),
    # template
    BadSpec("node-name-in-template", _pod_spec(nodeName="inf2-node-1"), ("nodeName must not be set",)),
    BadSpec("scheduler-name-in-template", _pod_spec(schedulerName="my-scheduler"), ("schedulerName must not be set",)),
    BadSpec(
        "neuroncore-limit-by-hand",
        _container(resources={"limits": {"aws.amazon.com/neuroncore": 2}}),
        (NEURON_RESOURCE_MESSAGE,),
    ),
    BadSpec(
        "neuron-device-request-by-hand",
        _container(resources={"requests": {"aws.amazon.com/neuron": "1"}}),
        (NEURON_RESOURCE_MESSAGE,),
    ),
    BadSpec(
        "visible-cores-env-by-hand",
        _container(env=[{"name": "NEURON_RT_VISIBLE_CORES", "value": "0-3"}]),
        (RESERVED_ENV_MESSAGE,),
    ),
    BadSpec(
        "num-cores-env-by-hand",
        _container(env=[{"name": "NEURON_RT_NUM_CORES", "value": "4"}]),
        (RESERVED_ENV_MESSAGE,),
    ),
    BadSpec(
        "init-container-with-neuron-cores",
        _pod_spec(
            initContainers=[
                {"name": "warm", "image": "w:1", "resources": {"requests": {"aws.amazon.com/neuroncore": "1"}}}
            ]
        ),
        ("an init container", NEURON_RESOURCE_MESSAGE),
    ),
    BadSpec("template-missing", _drop("spec", "template"), ("spec.template", "Required value")),
    BadSpec("no-containers", _pod_spec(containers=[]), ("spec.template.spec.containers", "at least 1 items")),
    BadSpec(
        "container-without-name", _container(name=None), ("spec.template.spec.containers[0].name", "Required value")
    ),
    BadSpec(
        "too-many-containers",
        _pod_spec(containers=[{"name": f"c{i}", "image": "i"} for i in range(33)]),
        ("spec.template.spec.containers", "must have at most 32 items"),
    ),
    # data-parallel hints
    BadSpec("dp-dim-negative", _data_parallel(dim=-1), ("spec.dataParallel.dim", "greater than or equal to 0")),
    BadSpec(
        "dp-workers-zero", _data_parallel(numWorkers=0), ("spec.dataParallel.numWorkers", "greater than or equal to 1")
    ),
    BadSpec(
        "dp-dynamic-batching-string",
        _data_parallel(dynamicBatching="yes"),
        ("spec.dataParallel.dynamicBatching", "must be of type boolean"),
    ),
    # the object itself
    BadSpec("spec-missing", _drop("spec"), ("spec", "Required value")),
    BadSpec("name-too-long-for-a-label", _name("m" * 64), ("at most 63 characters", "neuronplace.io/inference")),
    BadSpec("name-not-dns", _name("Bad_Name"), ("RFC 1123",)),
)


# Nodes the operator-refused cases are judged against: 24 cores (12 chips x 2) and a trn1 torus.
OPERATOR_FLEET = {"inf2.48xlarge": 1, "trn1.32xlarge": 1}
TRN1 = "trn1.32xlarge"


def _only_on(instance_type: str) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        resource["spec"]["placement"].setdefault("nodeSelector", {})["node.kubernetes.io/instance-type"] = instance_type

    return change


OPERATOR_REFUSED: tuple[BadSpec, ...] = (
    BadSpec(
        "privileged-container", _container(securityContext={"privileged": True}), ("privileged",), reason="InvalidSpec"
    ),
    BadSpec("host-network", _pod_spec(hostNetwork=True), ("hostNetwork",), reason="InvalidSpec"),
    BadSpec(
        "host-path-volume",
        _pod_spec(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        ("hostPath",),
        reason="InvalidSpec",
    ),
    BadSpec(
        "more-cores-than-the-fleet-has",
        _sequence(_spec(coresPerReplica=64, processesPerReplica=1)),
        ("needs 64 contiguous cores", "fewer than 64 cores"),
        reason="Unschedulable",
    ),
    BadSpec(
        "trn1-shape-not-allowed",
        _sequence(_spec(coresPerReplica=6, processesPerReplica=1), _only_on(TRN1)),
        ("1, 4, 8 or 16-device shape",),
        reason="Unschedulable",
    ),
    BadSpec(
        "selector-matches-no-node",
        _placement(nodeSelector={"neuronplace.io/pool": "no-such-pool"}),
        ("not matching the nodeSelector",),
        reason="Unschedulable",
    ),
    BadSpec("container-without-image", _container(image=None), ("image",), reason="PodRejected"),
)
