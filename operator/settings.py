"""Operator settings: one documented dataclass, read from the environment and overridable by flags.

Every field has an environment variable (``NEURONPLACE_<FIELD>``) so that the operator started by
``kopf run -m neuronplace.operator`` (no flags of ours) is configured the same way as the one started
by ``neuronplace run`` (whose flags write these variables before kopf imports the handlers).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from neuronplace.operator.election import Timings
from neuronplace.placement.capacity_upkeep import SETTLE_SECONDS
from neuronplace.placement.failures import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS
from neuronplace.placement.health import HEALTH_SETTLE_SECONDS, parse_unhealthy_conditions, watched
from neuronplace.placement.names import BINDING_SCHEDULER, BINDINGS, CAPACITY_PRIORITY_CLASS, NUMBERINGS
from neuronplace.placement.podsecurity import TemplatePolicy
from neuronplace.placement.replica_pods import SCHEDULER_SILENCE_SECONDS
from neuronplace.placement.ruling import Rules
from neuronplace.placement.selectors import parse_node_selector

LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs.

    namespaces: namespaces whose inferences (NeuronInferences) and pods are watched; empty means
        cluster-wide. Nodes are cluster-scoped and always watched. In namespace-scoped mode pods
        of other namespaces that hold Neuron resources are not seen, so they are not accounted.
    node_selector: label selector (``k=v,k2,!k3``) of the nodes this operator manages; empty means
        every node that has Neuron cores. The operator is the only allocator on managed nodes.
    numbering: the container-visible numbering of ``NEURON_RT_VISIBLE_CORES``. ``device-local``: the
        AWS device plugin (Neuron >= 2.16) mounts only the allocated devices and numbers cores from 0
        on the first one; ``global``: all host devices are visible, ids equal node-global ids.
    log_format: ``text`` or ``json`` (kopf's JSON log lines).
    node_grace_seconds: how long a node may be NotReady before its replicas are placed elsewhere.
    resync_seconds: every inference is reconciled at least this often, even without events.
    workers: reconciles running at once (API calls are concurrent; placement is serialised).
    waiting_retries_per_event: when room may have freed (a pod ends, a node or a volume changes), at
        most this many inferences waiting for room are looked at again, in the order they are served
        (``placement.priority.waiting_order``); the others at the next resync round. Bounds the work
        one event makes, whatever the backlog.
    watch_server_timeout / watch_client_timeout / watch_connect_timeout: kopf watch timeouts in
        seconds, so that a silently frozen watch is re-established (kopf issues #585, #957).
    error_backoff_seconds: first retry delay after a temporary error; doubles up to max_backoff_seconds.
    pod_security: the pod-template policy level, ``baseline`` or ``restricted`` (``placement.podsecurity``).
    allow_volume_types: volume types the policy refuses by default (gitRepo, nfs, iscsi, rbd, cephfs,
        glusterfs, flexVolume, ephemeral) to admit anyway; comma-separated in the environment.
    allow_privileged: lift the pod-template safety policy (``podsecurity``); the namespace rule stays.
    operator_namespace: the namespace the operator runs in (the chart sets it from the pod's own
        metadata); inferences there get no pods (status reason ``NamespaceNotServed``) unless
        ``serve_operator_namespace``. Empty (an operator run outside the cluster): no such rule.
    serve_operator_namespace: serve the operator's own namespace anyway.
    metrics_port: serve Prometheus metrics (``neuronplace.operator.metrics``) on this port at
        ``/metrics``; 0 (the default) serves none.
    metrics_address: the address ``/metrics`` listens on: every address (``0.0.0.0``, the default,
        for a Prometheus that scrapes the pod's IP), or ``127.0.0.1`` for a sidecar or port-forward only.
    binding: how replica pods reach their node when ``spec.placement.binding`` does not say:
        ``Scheduler`` (created unbound and pinned to the chosen node by required node affinity, so
        kube-scheduler checks cpu, memory, ports and volumes and binds it) or ``Direct``
        (``spec.nodeName``: faster, but nothing but placement checks the pod).
    unschedulable_seconds: how long a pinned pod may stay unbound with kube-scheduler saying
        Unschedulable before it is deleted and its replica placed on another node.
    scheduler_silence_seconds: how long a pinned pod may wait for any verdict of kube-scheduler (a
        bind, or why not) before Ready says ``SchedulerNotResponding`` (a Warning Event once).
    failure_backoff_seconds: how long a replica whose pod ended (Failed, Succeeded, rejected by the
        kubelet) waits before its next pod; doubles with each failure in a row up to
        max_failure_backoff_seconds (``placement.failures``). A node that refused a pod is avoided by
        that replica for twice the wait. Not the temporary-error backoff (error_backoff_seconds).
    max_failure_backoff_seconds: the longest such wait; at least failure_backoff_seconds.
    capacity_settle_seconds: how soon to look again when capacity requests wait for replica pods
        being created or pinned and not yet bound (``placement.capacity_upkeep.to_create_now``).
    allow_system_priority: admit templates whose priorityClassName has a value of 1,000,000,000 or
        more (system-cluster-critical, system-node-critical): such pods preempt, and a kubelet evicts
        other tenants' pods to admit them.
    capacity_requests: for every replica that fits on no node keep one capacity-request pod
        (``placement.capacity_requests``): unbound, asking kube-scheduler for what the replica needs, so that
        a cluster autoscaler (Karpenter, cluster-autoscaler) adds a node for it. Off for fleets
        without an autoscaler (the requests would only stay Pending).
    capacity_request_image: the image of the capacity requests' one container; it never runs
        anything but the pause process (kwok runs no image at all).
    capacity_priority_class: the PriorityClass of capacity requests (the chart and ``neuronplace
        local up`` install it: negative value, ``preemptionPolicy: Never``). Its value must be
        negative: a pod of priority 0 or more is no capacity request to the ledger.
    unhealthy_conditions: node conditions of other detectors that mark a node's Neuron hardware
        unhealthy, beside ``NeuronHealth=True`` and ``AcceleratedHardwareReady=False`` (always
        watched): comma-separated ``Type=Status``, each with the status that means a problem
        (``placement.health``). An unhealthy node takes no new replica; replicas there are moved
        as their ``spec.placement.unhealthyNodes`` says.
    health_settle_seconds: a node whose Neuron hardware turned healthy again takes replicas only this
        long after it last did (a flapping detector moves each replica at most once per window).
    leader_election: run for leadership on a ``coordination.k8s.io/v1`` Lease (``operator.leader``);
        only the leader writes to the cluster, the others keep their caches warm and wait. Off: this
        process acts at once, and nothing stops a second operator from acting too.
    leader_election_namespace: the Lease's namespace; empty means ``operator_namespace``, else ``default``.
    leader_election_id: the Lease's name.
    pod_name: this candidate's identity in the Lease (the chart sets it from the pod's name); empty
        means ``<hostname>_<pid>``. A process restarted under the same identity takes its Lease back at once.
    lease_duration_seconds: how long a Lease nobody renews stays held before another candidate takes it.
    renew_deadline_seconds: a leader that has not renewed for this long stops writing and exits; must
        be shorter than the lease duration, so that it stops before anyone else may start.
    retry_period_seconds: how often the leader renews and the others look at the Lease.
    """

    namespaces: tuple[str, ...] = ()
    node_selector: str = ""
    numbering: str = "device-local"
    log_format: str = "text"
    node_grace_seconds: float = 60.0
    resync_seconds: float = 30.0
    workers: int = 4
    waiting_retries_per_event: int = 20
    watch_server_timeout: float = 120.0
    watch_client_timeout: float = 150.0
    watch_connect_timeout: float = 10.0
    error_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    pod_security: str = "baseline"
    allow_volume_types: tuple[str, ...] = ()
    allow_privileged: bool = False
    operator_namespace: str = ""
    serve_operator_namespace: bool = False
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"
    binding: str = BINDING_SCHEDULER
    unschedulable_seconds: float = 10.0
    scheduler_silence_seconds: float = SCHEDULER_SILENCE_SECONDS
    failure_backoff_seconds: float = BACKOFF_FIRST_SECONDS
    max_failure_backoff_seconds: float = BACKOFF_MAX_SECONDS
    capacity_settle_seconds: float = SETTLE_SECONDS
    allow_system_priority: bool = False
    capacity_requests: bool = True
    capacity_request_image: str = "registry.k8s.io/pause:3.10"
    capacity_priority_class: str = CAPACITY_PRIORITY_CLASS
    unhealthy_conditions: str = ""
    health_settle_seconds: float = HEALTH_SETTLE_SECONDS
    leader_election: bool = True
    leader_election_namespace: str = ""
    leader_election_id: str = "neuronplace"
    pod_name: str = ""
    lease_duration_seconds: float = Timings.lease_duration
    renew_deadline_seconds: float = Timings.renew_deadline
    retry_period_seconds: float = Timings.retry_period

    def __post_init__(self) -> None:
        if self.numbering not in NUMBERINGS:
            raise ValueError(f"numbering {self.numbering!r} is not one of {', '.join(NUMBERINGS)}")
        if self.binding not in BINDINGS:
            raise ValueError(f"binding {self.binding!r} is not one of {', '.join(BINDINGS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        try:
            ipaddress.ip_address(self.metrics_address)
        except ValueError:
            raise ValueError(
                f"metrics address must be an IP address to listen on (0.0.0.0, 127.0.0.1, ::), "
                f"got {self.metrics_address!r}"
            ) from None
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be 0 (off) or 1-65535, got {self.metrics_port}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.waiting_retries_per_event < 1:
            raise ValueError(f"waiting_retries_per_event must be >= 1, got {self.waiting_retries_per_event}")
        for name in (
            "node_grace_seconds",
            "resync_seconds",
            "watch_server_timeout",
            "watch_client_timeout",
            "watch_connect_timeout",
            "error_backoff_seconds",
            "max_backoff_seconds",
            "unschedulable_seconds",
            "scheduler_silence_seconds",
            "failure_backoff_seconds",
            "max_failure_backoff_seconds",
            "capacity_settle_seconds",
            "health_settle_seconds",
        ):
            if not getattr(self, name) > 0:  # NaN is refused too
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_failure_backoff_seconds < self.failure_backoff_seconds:
            raise ValueError(
                f"max_failure_backoff_seconds ({self.max_failure_backoff_seconds}) must be >= "
                f"failure_backoff_seconds ({self.failure_backoff_seconds})"
            )
        if not self.capacity_request_image.strip() or not self.capacity_priority_class.strip():
            raise ValueError("capacity_request_image and capacity_priority_class must not be empty")
        parse_node_selector(self.node_selector)  # fail early on a malformed selector
        self.health_conditions()  # fail early on a malformed unhealthy condition
        self.lease_timings()  # fail early on timings that could let two leaders act
        if not self.leader_election_id.strip():
            raise ValueError("leader_election_id must not be empty")
        self.template_policy()  # fail early on an unknown level or volume type

    def rules(self) -> Rules:
        """The settings a ruling depends on (``neuronplace.placement.ruling``)."""
        return Rules(
            numbering=self.numbering,
            binding=self.binding,
            node_grace_seconds=self.node_grace_seconds,
            unschedulable_seconds=self.unschedulable_seconds,
            scheduler_silence_seconds=self.scheduler_silence_seconds,
            failure_backoff_seconds=self.failure_backoff_seconds,
            max_failure_backoff_seconds=self.max_failure_backoff_seconds,
            capacity_settle_seconds=self.capacity_settle_seconds,
            operator_namespace=self.operator_namespace,
            serve_operator_namespace=self.serve_operator_namespace,
            allow_system_priority=self.allow_system_priority,
            policy=self.template_policy(),
            capacity_requests=self.capacity_requests,
            capacity_request_image=self.capacity_request_image,
            capacity_priority_class=self.capacity_priority_class,
            node_selector=self.node_selector,
        )

    def health_conditions(self) -> tuple[tuple[str, str], ...]:
        """The (node condition type, problem status) pairs that make a node unhealthy."""
        return watched(parse_unhealthy_conditions(self.unhealthy_conditions))

    def lease_timings(self) -> Timings:
        """Leader election's timings (``operator.election``)."""
        return Timings(self.lease_duration_seconds, self.renew_deadline_seconds, self.retry_period_seconds)

    def lease_namespace(self) -> str:
        """Where the Lease lives: the setting, else the operator's own namespace, else ``default``."""
        return self.leader_election_namespace or self.operator_namespace or "default"

    def template_policy(self) -> TemplatePolicy:
        """The pod-template policy these settings ask for."""
        return TemplatePolicy(
            level=self.pod_security,
            allow_privileged=self.allow_privileged,
            allowed_volume_types=frozenset(self.allow_volume_types),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read ``NEURONPLACE_<FIELD>`` variables; unset ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for field in fields(cls):
            raw = environ.get(env_name(field.name))
            if raw is None or raw == "":
                continue
            if field.type == "tuple[str, ...]":
                values[field.name] = tuple(item.strip() for item in raw.split(",") if item.strip())
            elif field.type == "bool":
                values[field.name] = _boolean(field.name, raw)
            elif field.type in ("int",):
                values[field.name] = _number(field.name, raw, int)
            elif field.type in ("float",):
                values[field.name] = _number(field.name, raw, float)
            else:
                values[field.name] = raw
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for a child process)."""
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                out[env_name(field.name)] = ",".join(value)
            elif isinstance(value, bool):
                out[env_name(field.name)] = "true" if value else "false"
            else:
                out[env_name(field.name)] = str(value)
        return out


def env_name(field_name: str) -> str:
    return "NEURONPLACE_" + field_name.upper()


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{env_name(name)}={raw!r} is not a boolean (true/false)")


def _number(name: str, raw: str, kind):
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None
