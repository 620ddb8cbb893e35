"""``neuronplace run``: run the operator against the current kubeconfig (or in-cluster config).

The same as ``kopf run -m neuronplace.operator --standalone`` plus our settings as flags. Every
flag has an environment variable (``NEURONPLACE_<FIELD>``, see ``neuronplace.operator.settings``);
a flag wins over the variable. Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os

from neuronplace.operator.settings import LOG_FORMATS, OperatorSettings
from neuronplace.placement.names import BINDINGS, NUMBERINGS, POD_SECURITY_LEVELS


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = OperatorSettings.from_env()
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--node-selector",
        default=defaults.node_selector,
        metavar="SELECTOR",
        help="label selector of the nodes this operator manages, e.g. 'neuron=true' (default: all)",
    )
    parser.add_argument(
        "--numbering",
        choices=NUMBERINGS,
        default=defaults.numbering,
        help="NEURON_RT_VISIBLE_CORES numbering inside containers: device-local (AWS device "
        "plugin >= Neuron 2.16) or global",
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=defaults.log_format)
    parser.add_argument(
        "--node-grace-seconds",
        type=float,
        default=defaults.node_grace_seconds,
        help="how long a node may be NotReady before its replicas are placed elsewhere",
    )
    parser.add_argument("--workers", type=int, default=defaults.workers, help="reconciles running at once")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=defaults.resync_seconds,
        help="reconcile every resource at least this often",
    )
    parser.add_argument(
        "--pod-security",
        choices=POD_SECURITY_LEVELS,
        default=defaults.pod_security,
        help="pod-template policy level: baseline (default) or restricted (the Pod Security Standards profiles)",
    )
    parser.add_argument(
        "--allow-volume-types",
        default=",".join(defaults.allow_volume_types),
        metavar="TYPE[,TYPE]",
        help="volume types refused by default to admit anyway (gitRepo, nfs, iscsi, rbd, cephfs, glusterfs, "
        "flexVolume, ephemeral)",
    )
    parser.add_argument(
        "--allow-privileged",
        action="store_true",
        default=defaults.allow_privileged,
        help="let pod templates ask for privileged settings (hostNetwork, privileged, ...)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=defaults.metrics_port,
        metavar="PORT",
        help="serve Prometheus metrics on this port at /metrics (default 0: off)",
    )
    parser.add_argument(
        "--metrics-address",
        default=defaults.metrics_address,
        metavar="IP",
        help="address the metrics endpoint listens on (default 0.0.0.0: every address; 127.0.0.1: this host only)",
    )
    parser.add_argument(
        "--binding",
        choices=BINDINGS,
        default=defaults.binding,
        help="how pods reach their node unless spec.placement.binding says: Scheduler (pinned by node "
        "affinity, kube-scheduler checks and binds; default) or Direct (spec.nodeName)",
    )
    parser.add_argument(
        "--unschedulable-seconds",
        type=float,
        default=defaults.unschedulable_seconds,
        help="delete a pinned pod kube-scheduler still finds Unschedulable after this long and place it elsewhere",
    )
    parser.add_argument(
        "--scheduler-silence-seconds",
        type=float,
        default=defaults.scheduler_silence_seconds,
        help="report SchedulerNotResponding when kube-scheduler says nothing of a pinned pod for this long",
    )
    parser.add_argument(
        "--failure-backoff-seconds",
        type=float,
        default=defaults.failure_backoff_seconds,
        help="a replica whose pod ended waits this long before its next pod, doubling with each failure in a row",
    )
    parser.add_argument(
        "--max-failure-backoff-seconds",
        type=float,
        default=defaults.max_failure_backoff_seconds,
        help="the longest wait of a failing replica",
    )
    parser.add_argument(
        "--capacity-settle-seconds",
        type=float,
        default=defaults.capacity_settle_seconds,
        help="look again this soon when capacity requests wait for replica pods to be bound",
    )
    parser.add_argument(
        "--unhealthy-conditions",
        default=defaults.unhealthy_conditions,
        metavar="TYPE=STATUS,...",
        help="more node conditions that mark Neuron hardware unhealthy, each with the status that means a "
        "problem (NeuronHealth=True and AcceleratedHardwareReady=False always count)",
    )
    parser.add_argument(
        "--health-settle-seconds",
        type=float,
        default=defaults.health_settle_seconds,
        help="a node whose Neuron hardware is healthy again takes replicas only this long after",
    )
    parser.add_argument(
        "--allow-system-priority",
        action="store_true",
        default=defaults.allow_system_priority,
        help="admit templates whose priorityClassName has a value >= 1000000000 (the system classes)",
    )
    parser.add_argument(
        "--capacity-requests",
        action=argparse.BooleanOptionalAction,
        default=defaults.capacity_requests,
        help="keep a capacity-request pod for every replica that fits on no node, so that a cluster "
        "autoscaler adds a node for it (default: on; --no-capacity-requests for fleets without one)",
    )
    parser.add_argument(
        "--capacity-request-image",
        default=defaults.capacity_request_image,
        metavar="IMAGE",
        help="the pause image capacity-request pods run",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=defaults.leader_election,
        help="run for leadership on a Lease and write only while leading (default: on; "
        "--no-leader-election: act at once, for exactly one operator)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=defaults.leader_election_namespace,
        metavar="NS",
        help="namespace of the Lease (default: the operator's own namespace, else default)",
    )
    parser.add_argument(
        "--leader-election-id", default=defaults.leader_election_id, metavar="NAME", help="name of the Lease"
    )
    parser.add_argument(
        "--pod-name",
        default=defaults.pod_name,
        metavar="NAME",
        help="this operator's identity in the Lease (default: <hostname>_<pid>)",
    )
    parser.add_argument(
        "--lease-duration-seconds",
        type=float,
        default=defaults.lease_duration_seconds,
        help="a Lease nobody renews for this long may be taken by another operator",
    )
    parser.add_argument(
        "--renew-deadline-seconds",
        type=float,
        default=defaults.renew_deadline_seconds,
        help="a leader that could not renew for this long stops writing and exits",
    )
    parser.add_argument(
        "--retry-period-seconds",
        type=float,
        default=defaults.retry_period_seconds,
        help="how often the leader renews its Lease and the others look at it",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=os.environ.get("NEURONPLACE_LIVENESS"),
        help="serve kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's own progress too")


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    base = OperatorSettings.from_env()
    return OperatorSettings(
        **{
            **base.__dict__,
            "namespaces": tuple(args.namespaces) if args.namespaces else base.namespaces,
            "node_selector": args.node_selector,
            "numbering": args.numbering,
            "log_format": args.log_format,
            "node_grace_seconds": args.node_grace_seconds,
            "workers": args.workers,
            "resync_seconds": args.resync_seconds,
            "pod_security": args.pod_security,
            "allow_volume_types": tuple(t.strip() for t in args.allow_volume_types.split(",") if t.strip()),
            "allow_privileged": args.allow_privileged,
            "metrics_port": args.metrics_port,
            "metrics_address": args.metrics_address,
            "binding": args.binding,
            "unschedulable_seconds": args.unschedulable_seconds,
            "scheduler_silence_seconds": args.scheduler_silence_seconds,
            "failure_backoff_seconds": args.failure_backoff_seconds,
            "max_failure_backoff_seconds": args.max_failure_backoff_seconds,
            "capacity_settle_seconds": args.capacity_settle_seconds,
            "allow_system_priority": args.allow_system_priority,
            "capacity_requests": args.capacity_requests,
            "capacity_request_image": args.capacity_request_image,
            "unhealthy_conditions": args.unhealthy_conditions,
            "health_settle_seconds": args.health_settle_seconds,
            "leader_election": args.leader_election,
            "leader_election_namespace": args.leader_election_namespace,
            "leader_election_id": args.leader_election_id,
            "pod_name": args.pod_name,
            "lease_duration_seconds": args.lease_duration_seconds,
            "renew_deadline_seconds": args.renew_deadline_seconds,
            "retry_period_seconds": args.retry_period_seconds,
        },
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"neuronplace run: {error}")
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    # The startup handler reads the settings from the environment (as under a bare `kopf run`).
    os.environ.update(settings.to_env())

    import kopf

    import neuronplace.operator  # noqa: F401  (registers the handlers)

    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness,
    )
    return 0
