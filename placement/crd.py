"""The NeuronInference resource model → its CustomResourceDefinition manifest (pure; never imports kopf).

Over 300 lines because it is one schema: every field, its bounds and its CEL rules read together.

The committed ``crds/neuronplace.io_neuroninferences.yaml`` is generated from ``build_crd()``
(``python -m neuronplace.placement.crd > crds/neuronplace.io_neuroninferences.yaml``) and a unit test
checks that they are equal, so the schema has one source of truth.

Every rule that needs no cluster is enforced by the API server (OpenAPI bounds and CEL
``x-kubernetes-validations``), so an invalid spec is rejected at ``kubectl apply`` with a message
rather than discovered later by the operator.
"""

from __future__ import annotations

import sys

import yaml

from neuronplace.placement.names import (
    BINDINGS,
    CRD_NAME,
    DEVICE_MANAGEMENTS,
    GROUP,
    KIND,
    PLURAL,
    RESERVED_ENV,
    RESERVED_ENV_PREFIX,
    RESERVED_KEY_PREFIXES,
    RESERVED_KEYS,
    SHAPE_POLICIES,
    SHORT_NAMES,
    SINGULAR,
    STRATEGIES,
    UNHEALTHY_ACTIONS,
    VERSION,
)

# Bounds: no instance has more than 128 cores (trn2.48xlarge at LNC=1), so neither a replica nor
# one of its processes can use more; the replica bound keeps a typo (replicas: 10000) from
# flooding a cluster with pending pods.
MAX_CORES_PER_REPLICA = 128
MAX_REPLICAS = 1000
# Kubernetes label values are at most 63 characters and the name is the value of
# neuronplace.io/inference on every pod.
MAX_NAME_LENGTH = 63
# Bounds on lists and maps inside the template. CEL needs them to estimate a rule's cost; the
# API server refuses a CRD whose rules could be unbounded.
MAX_CONTAINERS = 32
MAX_ENV = 512
MAX_RESOURCES = 64
MAX_KEY_LENGTH = 253
# Fields of the template's pod spec and of each container (a PodSpec has about 40, a Container about
# 25): the schema keeps them as written, so this and the list bounds are what it can bound.
MAX_FIELDS = 64
# The byte size of a template cannot be measured by the schema or CEL (its pod spec is kept as written,
# and CEL cannot serialise), so the operator checks it (validation.template_bytes; InvalidSpec): the
# template as compact JSON, its first container counted once per process, at most 256 KiB. Every pod
# the operator makes is about that big, and pods must stay well under etcd's 1.5 MiB request limit;
# 256 KiB is also the API server's limit on a pod's annotations, and keeps the operator's memory for
# a thousand templates bounded. The API server itself refuses any request over 3 MiB.
MAX_TEMPLATE_BYTES = 256 * 1024


def _cel_strings(values) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def reserved_key_cel(key: str) -> str:
    """CEL: whether the string ``key`` is a reserved pod label or annotation key (as
    ``reserved.is_reserved_key``)."""
    prefixes = " || ".join(f"{key}.startsWith('{p}')" for p in RESERVED_KEY_PREFIXES)
    return f"{key} in {_cel_strings(RESERVED_KEYS)} || {prefixes}"


def reserved_env_cel(name: str) -> str:
    """CEL: whether the string ``name`` is a reserved env variable (as ``reserved.is_reserved_env``)."""
    return f"{name} in {_cel_strings(RESERVED_ENV)} || {name}.startsWith('{RESERVED_ENV_PREFIX}')"


def _rule(rule: str, message: str, **extra) -> dict:
    return {"rule": rule, "message": message, **extra}


def _string_map(description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "maxProperties": MAX_RESOURCES,
        "additionalProperties": {"type": "string"},
    }


def _template_metadata_map(kind: str) -> dict:
    """Labels or annotations copied onto every pod; the operator's own keys are refused, naming the key."""
    schema = _string_map(f"{kind.capitalize()} copied onto every pod (not the operator's own keys).")
    schema["x-kubernetes-validations"] = [
        _rule(
            f"self.all(k, !({reserved_key_cel('k')}))",
            f"template {kind} must not carry the operator's keys",
            messageExpression=f"'spec.template.metadata.{kind} must not carry ' + "
            f"self.filter(k, {reserved_key_cel('k')})[0] + ': keys under "
            f"{', '.join(RESERVED_KEY_PREFIXES)} and {', '.join(RESERVED_KEYS)} are reserved for the operator'",
        )
    ]
    return schema


def _toleration_schema() -> dict:
    return {
        "type": "object",
        "description": "A pod toleration (core/v1 Toleration), copied onto every pod and honoured by placement.",
        "properties": {
            "key": {"type": "string", "maxLength": MAX_KEY_LENGTH},
            "operator": {"type": "string", "enum": ["Exists", "Equal"]},
            "value": {"type": "string", "maxLength": 63},
            "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
            "tolerationSeconds": {"type": "integer", "format": "int64"},
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator Exists must not have a value",
            ),
        ],
    }


def _resource_list(description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "maxProperties": MAX_RESOURCES,
        "additionalProperties": {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        },
    }


def _container_schema(kind: str) -> dict:
    """Only the fields the rules look at are declared; the rest of a container is kept as written."""
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "maxProperties": MAX_FIELDS,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 63},
            "env": {
                "type": "array",
                "maxItems": MAX_ENV,
                "items": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "maxLength": MAX_KEY_LENGTH}},
                },
            },
            "resources": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {
                    "requests": _resource_list("Requests; Neuron resources are set by the operator, never here."),
                    "limits": _resource_list("Limits; Neuron resources are set by the operator, never here."),
                },
            },
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.resources) || ("
                "(!has(self.resources.requests) || !self.resources.requests.exists(k, k.startsWith('aws.amazon.com/neuron')))"
                " && (!has(self.resources.limits) || !self.resources.limits.exists(k, k.startsWith('aws.amazon.com/neuron'))))",
                f"{kind} must not request Neuron resources (aws.amazon.com/neuron*): the operator sets "
                "aws.amazon.com/neuroncore from coresPerReplica",
            ),
            _rule(
                f"!has(self.env) || self.env.all(e, !({reserved_env_cel('e.name')}))",
                f"{kind} must not set NEURON_RT_VISIBLE_CORES or NEURON_RT_NUM_CORES or any "
                f"{RESERVED_ENV_PREFIX}* variable: the operator sets them per process",
                messageExpression=f"'{kind} must not set NEURON_RT_VISIBLE_CORES or NEURON_RT_NUM_CORES or any "
                f"{RESERVED_ENV_PREFIX}* variable (it sets ' + self.env.filter(e, {reserved_env_cel('e.name')})[0].name"
                " + '): the operator sets them per process'",
            ),
        ],
    }


def _template_schema() -> dict:
    return {
        "type": "object",
        "description": "The pod template (metadata + spec), exactly like a Deployment's. The first container "
        "runs the model; with several processes it is repeated once per process. Bounded: at most "
        f"{MAX_FIELDS} fields in the pod spec and in each container, {MAX_CONTAINERS} containers, {MAX_ENV} env "
        f"entries each, {MAX_RESOURCES} labels and annotations; and, checked by the operator since a schema "
        f"cannot measure it, at most {MAX_TEMPLATE_BYTES // 1024} KiB as JSON with the first container counted "
        "once per process.",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "properties": {
                    "labels": _template_metadata_map("labels"),
                    "annotations": _template_metadata_map("annotations"),
                },
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "maxProperties": MAX_FIELDS,
                "required": ["containers"],
                "properties": {
                    "nodeName": {"type": "string"},
                    "schedulerName": {"type": "string"},
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_CONTAINERS,
                        "items": _container_schema("a container"),
                    },
                    "initContainers": {
                        "type": "array",
                        "maxItems": MAX_CONTAINERS,
                        "items": _container_schema("an init container"),
                    },
                },
                "x-kubernetes-validations": [
                    _rule(
                        "!has(self.nodeName)",
                        "template.spec.nodeName must not be set: the operator binds every pod to the node it places it on",
                    ),
                    _rule(
                        "!has(self.schedulerName)",
                        "template.spec.schedulerName must not be set: the operator binds pods itself, no scheduler is involved",
                    ),
                ],
            },
        },
    }


def _unhealthy_nodes_schema() -> dict:
    """``spec.placement.unhealthyNodes`` (``placement.moves``): what happens to replicas on nodes whose
    Neuron hardware a detector reports unhealthy."""
    # No default for the object itself: stored resources without it stay as they are (its fields'
    # defaults apply once it is given; absent, ``placement.moves`` uses the same ones).
    return {
        "type": "object",
        "description": "Replicas on nodes with unhealthy Neuron hardware (NeuronHealth True, "
        "AcceleratedHardwareReady False, or the operator's --unhealthy-conditions).",
        "properties": {
            "action": {
                "type": "string",
                "enum": list(UNHEALTHY_ACTIONS),
                "default": UNHEALTHY_ACTIONS[0],
                "description": "Move: delete such a replica's pod and place it again on a healthy node "
                "(only when it has room elsewhere); Keep: leave it there.",
            },
            "maxUnavailable": {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "default": 1,
                "description": "At most this many replicas down at once while moving (a count >= 1, or a "
                "percent of replicas rounded down, at least 1).",
                "x-kubernetes-validations": [
                    _rule(
                        "type(self) == int ? int(self) >= 1 : string(self).matches('^([1-9][0-9]?|100)%$')",
                        "maxUnavailable must be an integer >= 1 or a percent from 1% to 100%",
                    ),
                ],
            },
        },
    }


def spec_schema() -> dict:
    return {
        "type": "object",
        "required": ["coresPerReplica", "template"],
        "properties": {
            "replicas": {
                "type": "integer",
                "format": "int32",
                "default": 1,
                "minimum": 0,
                "maximum": MAX_REPLICAS,
                "description": "How many replicas (pods); 0 frees every core.",
            },
            "coresPerReplica": {
                "type": "integer",
                "format": "int32",
                "minimum": 1,
                "maximum": MAX_CORES_PER_REPLICA,
                "description": "NeuronCores per replica: one contiguous, node-global range on one node.",
            },
            "processesPerReplica": {
                "type": "integer",
                "format": "int32",
                "default": 1,
                "minimum": 1,
                "maximum": MAX_CORES_PER_REPLICA,
                "description": "Processes per replica; each gets coresPerReplica / processesPerReplica cores "
                "(one container per process).",
            },
            "placement": {
                "type": "object",
                "default": {},
                "description": "Where replicas may go and how they are packed.",
                "properties": {
                    "strategy": {
                        "type": "string",
                        "enum": list(STRATEGIES),
                        "default": "BinPack",
                        "description": "BinPack fills the fullest node that fits; Spread puts replicas on different nodes.",
                    },
                    "nodeSelector": _string_map("Only nodes with all these labels are considered."),
                    "tolerations": {
                        "type": "array",
                        "maxItems": 64,
                        "items": _toleration_schema(),
                        "description": "Taints these tolerate are no obstacle; copied onto every pod.",
                    },
                    "shapePolicy": {
                        "type": "string",
                        "enum": list(SHAPE_POLICIES),
                        "default": "Strict",
                        "description": "Strict: only shapes the Neuron topology supports (trn1.32xlarge: 1, 4, 8 "
                        "or 16 devices); Permissive: any contiguous range.",
                    },
                    "alignedStart": {
                        "type": "boolean",
                        "default": False,
                        "description": "Start each range at a multiple of its size (collectives on trn1).",
                    },
                    # No schema default: absent means the operator's own setting decides.
                    "binding": {
                        "type": "string",
                        "enum": list(BINDINGS),
                        "description": "How a replica pod reaches its node. Scheduler: created unbound, pinned to "
                        "the chosen node by required node affinity, so kube-scheduler checks it (cpu, memory, ports, "
                        "volumes) and binds it. Direct: created with spec.nodeName. Absent: the operator's setting "
                        "(--binding, default Scheduler); status.binding shows the mode in effect.",
                    },
                    "deviceManagement": {
                        "type": "string",
                        "enum": list(DEVICE_MANAGEMENTS),
                        "default": "Auto",
                        "description": "Which nodes' Neuron devices replicas take. DevicePlugin: nodes with the "
                        "device plugin's aws.amazon.com/neuroncore allocatable. DRA: nodes the Neuron DRA driver "
                        "manages (each replica gets a ResourceClaim for whole chips; needs binding Scheduler). "
                        "Auto: whatever the node offers, device-plugin nodes first.",
                    },
                    "wholeChips": {
                        "type": "boolean",
                        "default": False,
                        "description": "On DRA nodes (one device per chip), round a replica whose cores fill no "
                        "whole chips up to whole chips, leaving the rest idle; false: such a replica goes to no DRA node.",
                    },
                    "unhealthyNodes": _unhealthy_nodes_schema(),
                },
            },
            "dataParallel": {
                "type": "object",
                "description": "Hints for neuronplace.runtime.DataParallel, passed as NEURONPLACE_DP_* env.",
                "properties": {
                    "dim": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 31,
                        "description": "Dimension to scatter along (NEURONPLACE_DP_DIM).",
                    },
                    "dynamicBatching": {
                        "type": "boolean",
                        "description": "Dynamic batching on or off (NEURONPLACE_DP_DYNAMIC_BATCHING).",
                    },
                    "numWorkers": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 1024,
                        "description": "Worker threads (NEURONPLACE_DP_NUM_WORKERS).",
                    },
                },
            },
            "template": _template_schema(),
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.processesPerReplica) || self.coresPerReplica % self.processesPerReplica == 0",
                "coresPerReplica must be divisible by processesPerReplica (every process gets the same number of cores)",
            ),
        ],
    }


def _condition_schema() -> dict:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }


def status_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "replicas": {"type": "integer", "format": "int32", "description": "Pods that exist."},
            "readyReplicas": {"type": "integer", "format": "int32", "description": "Pods that are Ready."},
            "selector": {
                "type": "string",
                "description": "Label selector of the pods (for the scale subresource / HPA).",
            },
            "binding": {
                "type": "string",
                "description": "The binding mode in effect: spec.placement.binding, else the operator's setting.",
            },
            "placements": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "replica": {"type": "integer"},
                        "pod": {"type": "string"},
                        "node": {"type": "string"},
                        "cores": {"type": "string", "description": "Node-global range, e.g. 4-7."},
                        "processCores": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Node-global range of each process.",
                        },
                        "deviceManagement": {
                            "type": "string",
                            "description": "The path the replica took: DevicePlugin or DRA.",
                        },
                        "resourceClaim": {
                            "type": "string",
                            "description": "On DRA: the replica's ResourceClaim (its allocation names the chips).",
                        },
                    },
                },
            },
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


# `kubectl get ninf` shows what a NeuronInference is doing by default: the reasons of its Placed,
# Ready and WaitingForCapacity conditions (empty while a condition is absent); -o wide adds how.
PRINTER_COLUMNS = [
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired replicas"},
    {
        "name": "ReadyReplicas",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Pods that are Ready",
    },
    {"name": "Cores", "type": "integer", "jsonPath": ".spec.coresPerReplica", "description": "NeuronCores per replica"},
    {
        "name": "Placed",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Placed")].reason',
        "description": "Reason of the Placed condition (Placed, Pending, Unschedulable, ...)",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Reason of the Ready condition (AllReplicasReady, ReplicasNotReady, SchedulerNotResponding)",
    },
    {
        "name": "WaitingForCapacity",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="WaitingForCapacity")].reason',
        "description": "Reason of the WaitingForCapacity condition; empty while no replica waits for a new node",
    },
    {
        "name": "Strategy",
        "type": "string",
        "jsonPath": ".spec.placement.strategy",
        "description": "BinPack or Spread",
        "priority": 1,
    },
    {
        "name": "Binding",
        "type": "string",
        "jsonPath": ".status.binding",
        "description": "Scheduler or Direct (in effect)",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict:
    """The CustomResourceDefinition manifest for NeuronInference."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "listKind": f"{KIND}List",
                "categories": ["neuronplace"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "NeuronInference: replicas of a model, each on a contiguous NeuronCore range "
                            "of one node, placed and bound by the neuronplace operator.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                            "x-kubernetes-validations": [
                                _rule(
                                    f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                                    f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it is the value of the "
                                    "pods' neuronplace.io/inference label",
                                ),
                            ],
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The committed YAML text, byte for byte."""
    header = "# Generated by `python -m neuronplace.placement.crd` from placement/crd.py; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, default_flow_style=False, width=1000)


if __name__ == "__main__":
    sys.stdout.write(render_crd_yaml())
