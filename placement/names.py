"""Every name that more than one module uses, defined once: the API group, labels, annotations,
resource names, env variables, condition types and reasons, and the enum values of the spec.

These are contracts with users, with the AWS Neuron device plugin and with the runtime inside the
pod: changing one is an API change. The env variables the pod's runtime reads are defined beside
the core-set grammar in :mod:`neuronplace.runtime.coreset` (the runtime never imports this package)
and re-exported here.
"""

from __future__ import annotations

from neuronplace.runtime.coreset import (
    DP_DIM_VAR,
    DP_DYNAMIC_BATCHING_VAR,
    DP_NUM_WORKERS_VAR,
    NUM_CORES_VAR,
    PROCESS_COUNT_VAR,
    PROCESS_INDEX_VAR,
    VISIBLE_CORES_VAR,
)

# ---- the custom resource ---------------------------------------------------------------------
GROUP = "neuronplace.io"
VERSION = "v1alpha1"
KIND = "NeuronInference"
PLURAL = "neuroninferences"
SINGULAR = "neuroninference"
SHORT_NAMES = ("ninf",)
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

# The pod-template policy levels (operator setting ``pod_security``): the Pod Security Standards'
# baseline profile (plus the volume types in ``podsecurity.NODE_VOLUME_TYPES``), or restricted.
POD_SECURITY_LEVELS = ("baseline", "restricted")

# Enum values of the spec (the CRD's schema refuses anything else).
STRATEGIES = ("BinPack", "Spread")
SHAPE_POLICIES = ("Strict", "Permissive")
# spec.placement.deviceManagement: which nodes' Neuron devices a replica may take (Auto: whatever the
# node offers; the device plugin's extended resources, or the Neuron DRA driver's ResourceClaims).
DEVICE_MANAGEMENTS = ("Auto", "DevicePlugin", "DRA")
DEVICE_MANAGEMENT_AUTO, DEVICE_MANAGEMENT_DEVICE_PLUGIN, DEVICE_MANAGEMENT_DRA = DEVICE_MANAGEMENTS
# How NEURON_RT_VISIBLE_CORES is numbered: from 0 at the first device the device plugin mounted
# (device-local), or node-wide (global).
NUMBERINGS = ("device-local", "global")
# How a replica pod gets to its node (``spec.placement.binding``, default from the operator setting
# ``binding``): created unbound and pinned to the chosen node by required node affinity, so that
# kube-scheduler checks it and binds it (Scheduler); or created with ``spec.nodeName`` (Direct).
BINDINGS = ("Scheduler", "Direct")
BINDING_SCHEDULER, BINDING_DIRECT = BINDINGS

# ---- Kubernetes resources and well-known labels --------------------------------------------------
NEURONCORE_RESOURCE = "aws.amazon.com/neuroncore"
NEURON_DEVICE_RESOURCE = "aws.amazon.com/neuron"
# Whole-device requests: today's name, and the one Neuron dropped in its 2.20 release (old pods
# may still carry it).
NEURON_DEVICE_RESOURCES = (NEURON_DEVICE_RESOURCE, "aws.amazon.com/neurondevice")
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
LEGACY_INSTANCE_TYPE_LABEL = "beta.kubernetes.io/instance-type"

# ---- our labels and annotations ------------------------------------------------------------------
INFERENCE_LABEL = "neuronplace.io/inference"  # on every managed pod: the owning NeuronInference
REPLICA_LABEL = "neuronplace.io/replica"  # the replica ordinal
CORES_ANNOTATION = "neuronplace.io/cores"  # the replica's node-global core range ("4-7")
TEMPLATE_HASH_ANNOTATION = "neuronplace.io/template-hash"
NUMBERING_ANNOTATION = "neuronplace.io/numbering"
TOPOLOGY_OVERRIDE_KEY = "neuronplace.io/topology"  # node label or annotation: "<chips>x<cores>[,ring|torus]"
LNC_KEY = "neuronplace.io/lnc"  # node label: trn2 logical NeuronCore size, "1" or "2"
# On a capacity-request pod (a placeholder that asks the cluster's autoscaler for a node for a
# replica that fits nowhere): the NeuronInference it asks for. It never carries INFERENCE_LABEL.
CAPACITY_REQUEST_LABEL = "neuronplace.io/capacity-request"
# The end of a capacity request's pod name, ``<inference>-<replica>-capacity``: a replica pod's name
# ends in its ordinal, so no replica can be taken for a request (nor the reverse).
CAPACITY_REQUEST_SUFFIX = "-capacity"
# The PriorityClass of capacity-request pods (installed by the chart and the local control plane):
# negative, so that any replica preempts them, and never preempting anything itself.
CAPACITY_PRIORITY_CLASS = "neuronplace-capacity-request"

# The AWS Neuron scheduler extension's pod annotations, so that the stock device plugin would mount
# exactly these cores. NEURON_ALLOCATED is "false" when the scheduler side writes it; the plugin
# flips it to "true" once it has allocated the devices. NEURON_ALLOC_TIME is Unix nanoseconds.
AWS_NEURON_IDS = "AWS_NEURON_IDS"
NEURON_RESOURCE_TYPE = "NEURON_RESOURCE_TYPE"
NEURON_ALLOCATED = "NEURON_ALLOCATED"
NEURON_ALLOC_TIME = "NEURON_ALLOC_TIME"

# ---- env given to every process container --------------------------------------------------------
ENV_VISIBLE_CORES = VISIBLE_CORES_VAR
ENV_NUM_CORES = NUM_CORES_VAR
# This process's node-global range. Part of the immutable spec, so the ledger reads what a replica
# holds from it (``claims.spec_cores``), never from the pod's editable annotations alone.
ENV_NODE_CORES = "NEURONPLACE_NODE_CORES"
ENV_REPLICA = "NEURONPLACE_REPLICA"
ENV_PROCESS_INDEX = PROCESS_INDEX_VAR
ENV_PROCESS_COUNT = PROCESS_COUNT_VAR
ENV_DP_DIM = DP_DIM_VAR
ENV_DP_DYNAMIC_BATCHING = DP_DYNAMIC_BATCHING_VAR
ENV_DP_NUM_WORKERS = DP_NUM_WORKERS_VAR
# Env the operator owns in the Neuron containers; a template may not set them.
RESERVED_ENV = (ENV_VISIBLE_CORES, ENV_NUM_CORES)
# Nor any variable of ours (the ledger trusts ENV_NODE_CORES in a pod's spec, so no container of
# a template, sidecar or init, may carry one).
RESERVED_ENV_PREFIX = "NEURONPLACE_"

# ---- pod metadata only the operator writes ---------------------------------------------------------
# Label and annotation keys reserved on pods: anything under our API group, and the AWS Neuron
# device-plugin protocol (AWS_NEURON_IDS, NEURON_*). A template may not carry them (InvalidSpec, and
# the CRD's schema), and the chart's admission policy for pods lets only the operator create pods
# with them and nobody change them afterwards, except ALLOCATION_ANNOTATIONS.
RESERVED_KEY_PREFIXES = (f"{GROUP}/", "NEURON_")
RESERVED_KEYS = (AWS_NEURON_IDS,)
# What the device plugin (and the node) write on a pod once its devices are allocated.
ALLOCATION_ANNOTATIONS = (NEURON_ALLOCATED, NEURON_ALLOC_TIME)

# ---- status ---------------------------------------------------------------------------------------
CONDITION_PLACED = "Placed"
CONDITION_READY = "Ready"  # also the type of a Pod's and a Node's readiness condition
CONDITION_REPLICA_FAILURE = "ReplicaFailure"  # as a Deployment's: replica pods keep failing
CONDITION_POD_SCHEDULED = "PodScheduled"  # a Pod's condition; kube-scheduler's verdict
# True while replicas that fit on no node have capacity requests out for the autoscaler.
CONDITION_WAITING_FOR_CAPACITY = "WaitingForCapacity"
REASON_CAPACITY_REQUESTED = "CapacityRequested"
REASON_PLACED = "Placed"
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_POD_REJECTED = "PodRejected"
REASON_PENDING = "Pending"
REASON_READY = "AllReplicasReady"
REASON_NOT_READY = "ReplicasNotReady"
# Ready is False because kube-scheduler has given no verdict on pinned replica pods for a long
# while (stopped, or wedged): it binds nothing, and without this nothing would say why.
REASON_SCHEDULER_NOT_RESPONDING = "SchedulerNotResponding"
# The Event reason (and failure metric reason) of a pod creation the API server forbids (403: quota,
# a terminating namespace, RBAC); the status keeps REASON_POD_REJECTED for it.
REASON_POD_FORBIDDEN = "PodForbidden"
# An inference in the operator's own namespace, which the operator does not serve by default.
REASON_NAMESPACE_NOT_SERVED = "NamespaceNotServed"
# A replica with a claim only kube-scheduler can bind (WaitForFirstConsumer) while its pods are
# bound directly (spec.nodeName), which skips the scheduler: no pod is made, it could never start.
REASON_VOLUME_NEEDS_SCHEDULER = "VolumeNeedsScheduler"
# A replica that may only go to DRA-managed nodes while its pods are bound directly: only
# kube-scheduler allocates ResourceClaims, so no pod is made.
REASON_DRA_NEEDS_SCHEDULER = "DRANeedsScheduler"
# Whether replicas run on nodes with unhealthy Neuron hardware (``placement.health``): False while
# any does, with why (being moved, kept, no room to move); True once none does again.
CONDITION_HEALTHY = "Healthy"
REASON_NO_UNHEALTHY_NODES = "NoUnhealthyNodes"
REASON_MOVING_REPLICAS = "MovingReplicas"
REASON_NO_ROOM_TO_MOVE = "NoRoomToMove"
REASON_KEPT_ON_UNHEALTHY_NODES = "KeptOnUnhealthyNodes"
# What happens to replicas on unhealthy nodes (``spec.placement.unhealthyNodes.action``).
UNHEALTHY_ACTIONS = ("Move", "Keep")
ACTION_MOVE, ACTION_KEEP = UNHEALTHY_ACTIONS

# Why a node's NeuronCore claims are inconsistent (shown by ``neuronplace cores`` and the metric
# ``neuronplace_node_inconsistent_claims``): a pod carries our inference label but its controller is
# not a NeuronInference the operator knows; a pod of a known NeuronInference has a label or
# ``neuronplace.io/cores`` range that disagrees with its owner or its own request; a pod's
# ``AWS_NEURON_IDS`` list more or fewer ids than it requests; two pods' cores overlap. A pod of a
# known NeuronInference whose annotations disagree with its spec holds both (CoresMismatch).
CLAIM_NOT_OWNED = "NotOwned"
CLAIM_ANNOTATION_MISMATCH = "CoresMismatch"
CLAIM_IDS_MISMATCH = "NeuronIdsMismatch"
CLAIM_OVERLAP = "Overlap"
# Why a foreign pod pinned to a node holds nothing there (reported the same ways): kube-scheduler
# will not bind it while it has scheduling gates, nor ever when it asks for more than the node's
# allocatable.
CLAIM_GATED = "SchedulingGated"
CLAIM_EXCEEDS_NODE = "ExceedsNode"

# A pod in one of these phases has finished: it holds no cores and is not a live replica.
TERMINAL_PHASES = ("Succeeded", "Failed")
