"""``neuronplace local``: build, start, stop and list local control planes with simulated Neuron nodes.

neuronplace local build                      # build the pinned binaries, Karpenter included (cached)
neuronplace local up [--name N] [--fleet inf2.48xlarge=2,trn1.32xlarge=1] [--autoscaler]
neuronplace local up --fleet inf2.48xlarge=1,trn2.48xlarge=1:dra  # :dra = the simulated Neuron DRA driver
neuronplace local up --fleet "" --autoscaler # no Neuron node: Karpenter adds them for Pending pods
neuronplace local status                     # clusters, their components and nodes
neuronplace local down [--name N]
neuronplace local image [--tag T] [--base IMAGE]  # build the operator image; prints its reference
neuronplace local node NODE --condition NeuronHealth=True:NeuronHasError_HBM_UNCORRECTABLE_ERROR
neuronplace local node NODE --clear-condition NeuronHealth --allocatable aws.amazon.com/neuron=11
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

DEFAULT_NAME = "neuronplace"
DEFAULT_FLEET = "inf2.48xlarge=2,trn1.32xlarge=1"
MAX_NODES_LISTED = 20  # beyond this, status shows counts per instance type only


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "build",
        help="build the pinned control-plane binaries, Karpenter and actionlint into the cache (seconds when cached)",
    )
    up = actions.add_parser("up", help="start a cluster and its simulated fleet; print the kubeconfig")
    up.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
    up.add_argument(
        "--fleet",
        default=DEFAULT_FLEET,
        help=f"instances to simulate, TYPE=COUNT[:dp|:dra][,...] (default {DEFAULT_FLEET}); ':dra' nodes are "
        'managed by the simulated Neuron DRA driver (ResourceSlices, no Neuron allocatable); "" for none',
    )
    up.add_argument(
        "--autoscaler",
        action="store_true",
        help="also run Karpenter (kwok provider) with a NodePool of the Neuron instance types: it adds a "
        "node for Pending pods that fit one and removes empty nodes (consolidateAfter 10 s; about 40 s in all)",
    )
    down = actions.add_parser("down", help="stop a cluster and remove its state")
    down.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
    actions.add_parser("status", help="list local clusters and their nodes")
    node = actions.add_parser(
        "node",
        help="mark a simulated node's Neuron hardware unhealthy or healthy again (a node condition, as the "
        "Neuron problem detector or the EKS node monitoring agent writes it), or lower its allocatable (as the "
        "device plugin does)",
    )
    node.add_argument("node", metavar="NODE", help="the node's name")
    node.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
    node.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="TYPE=STATUS[:REASON]",
        help="set a node condition, e.g. NeuronHealth=True:NeuronHasError_HBM_UNCORRECTABLE_ERROR, "
        "AcceleratedHardwareReady=False:NeuronHBMUncorrectableError, or NeuronHealth=False to clear it",
    )
    node.add_argument("--clear-condition", action="append", default=[], metavar="TYPE", help="remove a node condition")
    node.add_argument(
        "--allocatable",
        action="append",
        default=[],
        metavar="RESOURCE=COUNT",
        help="set an allocatable count, e.g. aws.amazon.com/neuron=11 (one device less on an inf2.48xlarge)",
    )
    image = actions.add_parser(
        "image", help="build the operator image with podman (or docker); print its reference last"
    )
    image.add_argument("--tag", help="image name:tag (default neuronplace:<version>, the chart's default image)")
    image.add_argument(
        "--base",
        help="base image to build on, no fallback (default: python:3.11-slim when "
        "present or pullable, else a Debian bookworm base made with mmdebstrap)",
    )
    image.add_argument(
        "--refresh-base",
        action="store_true",
        help="make the Debian base again (it gets Debian's updates only this way)",
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    # Imported here so `neuronplace local --help` stays instant.
    from neuronplace.local import build
    from neuronplace.local.cluster import LocalCluster, list_clusters
    from neuronplace.local.fleet import parse_fleet

    if args.action == "build":
        for components in (build.COMPONENTS, build.AUTOSCALER, build.LINTERS):
            started = time.monotonic()
            report = build.ensure_binaries(_say, components)
            print(
                f"binaries in {report.bin_dir} ({len(report.built)} built, {len(report.cached)} cached, "
                f"{time.monotonic() - started:.1f} s)"
            )
        return 0

    if args.action == "node":
        return _node(args)

    if args.action == "image":
        from neuronplace.local import image

        try:
            built = image.build_image(tag=args.tag, base=args.base, progress=_say, refresh_base=args.refresh_base)
        except (image.ImageError, subprocess.SubprocessError) as error:
            _say(f"neuronplace local image: {error}")
            return 1
        _say(f"built with {built.engine} on {built.base} in {built.seconds:.1f} s, {built.size_bytes / 1e6:.0f} MB")
        print(built.reference)
        return 0

    if args.action == "up":
        try:
            fleet = parse_fleet(args.fleet) if args.fleet.strip() else []
            cluster = LocalCluster(args.name)
        except ValueError as error:
            _say(f"neuronplace local up: {error}")
            return 2
        started = time.monotonic()
        try:
            cluster.up(fleet=fleet, progress=_say)
            if args.autoscaler:
                from neuronplace.local.autoscaler import Autoscaler

                try:
                    Autoscaler(cluster).start(progress=_say)
                except BaseException:
                    cluster.down()
                    raise
        except (RuntimeError, build.BuildError, subprocess.SubprocessError, TimeoutError) as error:
            _say(f"neuronplace local up: {error}")
            for note in getattr(error, "__notes__", ()):
                _say(note)
            return 1
        nodes = sum(item.count for item in fleet)
        print(f"cluster {cluster.name} is up with {nodes} Ready node(s) in {time.monotonic() - started:.1f} s")
        if args.autoscaler:
            print("autoscaler: Karpenter, NodePool 'neuron' (kubectl get nodepools,nodeclaims)")
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(
            f"try:        {cluster.bin_dir / 'kubectl'} --kubeconfig {cluster.kubeconfig} get nodes -L node.kubernetes.io/instance-type"
        )
        if any(item.dra for item in fleet):
            print(
                f"DRA nodes:  {cluster.bin_dir / 'kubectl'} --kubeconfig {cluster.kubeconfig} get deviceclasses,resourceslices"
            )
        return 0

    if args.action == "down":
        cluster = LocalCluster(args.name)
        if not cluster.exists() and not cluster.cluster_dir.exists():
            _say(f"no local cluster named {args.name!r}")
            return 1
        cluster.down()
        print(f"cluster {args.name} removed")
        return 0

    if args.action == "status":
        clusters = list_clusters()
        if not clusters:
            print("no local clusters")
        for cluster in clusters:
            _print_status(cluster)
        return 0
    raise AssertionError(f"unhandled action {args.action!r}")


def _node(args: argparse.Namespace) -> int:
    from neuronplace.local import node_health
    from neuronplace.local.cluster import LocalCluster

    try:  # every argument is checked before anything is written
        conditions = [node_health.parse_condition(text) for text in args.condition]
        allocatable = [node_health.parse_allocatable(text) for text in args.allocatable]
    except ValueError as error:
        _say(f"neuronplace local node: {error}")
        return 2
    if not (conditions or allocatable or args.clear_condition):
        _say("neuronplace local node: nothing to do: give --condition, --clear-condition or --allocatable")
        return 2
    cluster = LocalCluster(args.name)
    if not cluster.exists():
        _say(f"no local cluster named {args.name!r}")
        return 1
    try:
        for change in conditions:
            node_health.set_condition(cluster, args.node, change)
            print(f"node {args.node}: {change.type_}={change.status} {change.reason}".rstrip())
        for type_ in args.clear_condition:
            removed = node_health.clear_condition(cluster, args.node, type_)
            print(f"node {args.node}: {type_} {'removed' if removed else 'was not set'}")
        for resource, count in allocatable:
            node_health.set_allocatable(cluster, args.node, resource, count)
            print(f"node {args.node}: allocatable {resource}={count}")
    except subprocess.CalledProcessError as error:
        _say(f"neuronplace local node: {(error.stderr or '').strip() or error}")
        return 1
    return 0


def _leader(cluster) -> str:
    """Who holds the operator's Lease (where the operator's settings from the environment say it is)."""
    from neuronplace.operator.leader import describe
    from neuronplace.operator.settings import OperatorSettings

    settings = OperatorSettings.from_env()
    namespace, name = settings.lease_namespace(), settings.leader_election_id
    result = cluster.kubectl("get", "lease", name, "-n", namespace, "-o", "json", check=False, timeout=20)
    if result.returncode != 0 and "NotFound" not in result.stderr:
        return f"leader: unknown ({result.stderr.strip()[-200:]})"
    return describe(json.loads(result.stdout) if result.returncode == 0 else None, namespace, name)


def _print_status(cluster) -> None:
    from neuronplace.local.cluster import CONTROL_PLANE_COMPONENTS
    from neuronplace.placement.conditions import condition
    from neuronplace.placement.names import CONDITION_READY, INSTANCE_TYPE_LABEL, NEURONCORE_RESOURCE

    running = cluster.running_components()
    rss_mb = sum(cluster.rss_bytes().values()) / 2**20
    print(
        f"{cluster.name}: {sum(c in running for c in CONTROL_PLANE_COMPONENTS)}/{len(CONTROL_PLANE_COMPONENTS)} components running ({rss_mb:.0f} MB RSS); "
        f"kubeconfig {cluster.kubeconfig}"
    )
    missing = [c for c in CONTROL_PLANE_COMPONENTS if c not in running]
    if missing:
        print(f"  not running: {', '.join(missing)}")
    if "karpenter" in running:
        print(f"  autoscaler: Karpenter (pid {running['karpenter']}, log {cluster.logs_dir / 'karpenter.log'})")
    if "kube-apiserver" not in running:
        return
    result = cluster.kubectl("get", "nodes", "-o", "json", check=False, timeout=20)
    if result.returncode != 0:
        print(f"  nodes: unavailable ({result.stderr.strip()[-200:]})")
        return
    nodes = json.loads(result.stdout)["items"]
    dra_nodes = _dra_nodes(cluster)
    print(f"  {_leader(cluster)}")
    by_type: dict[str, list[int]] = {}
    rows = []
    for node in nodes:
        ready = condition(node, CONDITION_READY).get("status", "?")
        instance_type = node["metadata"].get("labels", {}).get(INSTANCE_TYPE_LABEL, "-")
        cores = node["status"].get("allocatable", {}).get(NEURONCORE_RESOURCE, "-")
        counts = by_type.setdefault(instance_type, [0, 0])
        counts[0] += 1
        counts[1] += ready == "True"
        # Who manages the node's chips: the device plugin's allocatable, the DRA driver's slices, or both.
        management = {(False, False): "-", (True, False): "plugin", (False, True): "DRA", (True, True): "BOTH"}[
            (cores != "-", node["metadata"]["name"] in dra_nodes)
        ]
        rows.append(
            f"  {node['metadata']['name']:40} {instance_type:16} Ready={ready:7} neuroncores={cores:5} devices={management}"
        )
    summary = ", ".join(f"{t} {ready}/{total} Ready" for t, (total, ready) in sorted(by_type.items()))
    managed = f"; {len(dra_nodes)} managed by the Neuron DRA driver" if dra_nodes else ""
    print(f"  {len(nodes)} node(s){': ' + summary if summary else ''}{managed}")
    if rows and len(rows) <= MAX_NODES_LISTED:
        print("\n".join(rows))


def _dra_nodes(cluster) -> set[str]:
    """Nodes that the Neuron DRA driver's ResourceSlices name (empty when they cannot be read)."""
    from neuronplace.local import dra_driver

    try:
        return set(dra_driver.published(cluster))
    except subprocess.SubprocessError:
        return set()
