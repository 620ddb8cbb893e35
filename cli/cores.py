"""``neuronplace cores``: the live NeuronCore map of a cluster (text, or a PNG with ``--png``).

Also a kubectl plugin: the package installs ``kubectl-neuronplace``, so ``kubectl neuronplace cores``
works wherever it is on PATH. The map is rebuilt the way the operator rebuilds its ledger: from the
nodes and the pods themselves, with one difference: with no list of the NeuronInferences at hand,
any pod whose controller is a NeuronInference counts as managed (the operator also checks that it
knows that inference, by UID). Nodes whose claims do not add up get a line per pod saying why.

The PNG is drawn here, not in ``neuronplace.placement.coremap`` beside the text map: placement is
the pure decision core and never imports matplotlib (an import contract in pyproject.toml).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuronplace.placement.coremap import NodeMap


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Pods controlled by any NeuronInference count as placed by neuronplace (the operator also checks "
        "that it knows the resource's UID, and reads a replica's cores from its spec); nodes whose claims do not add "
        "up get an 'inconsistent:' line per pod, and pinned pods that could not run there a 'not holding:' line."
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument(
        "--selector", "-l", default="", help="only nodes with these labels, e.g. 'neuronplace.io/pool=a'"
    )
    parser.add_argument("--png", metavar="FILE", help="also write the map as a PNG image")
    parser.add_argument(
        "--unhealthy-conditions",
        default=os.environ.get("NEURONPLACE_UNHEALTHY_CONDITIONS", ""),
        metavar="TYPE=STATUS,...",
        help="more node conditions that mark Neuron hardware unhealthy, as the operator's setting "
        "(NeuronHealth=True and AcceleratedHardwareReady=False always count)",
    )
    parser.add_argument(
        "--lease",
        metavar="NAMESPACE/NAME",
        help="the operator's leader-election Lease, whose holder is shown (default: from "
        "NEURONPLACE_LEADER_ELECTION_NAMESPACE / NEURONPLACE_LEADER_ELECTION_ID, else default/neuronplace)",
    )


def collect(kubeconfig: str | None = None, selector: str = "", conditions: tuple[tuple[str, str], ...] | None = None):
    """(node maps, foreign holdings) read live from the cluster; ``conditions``: the (type, problem
    status) pairs that make a node unhealthy (default: the built-in ones)."""
    from kubernetes import client, config

    from neuronplace.placement.coremap import node_maps
    from neuronplace.placement.dra import dra_nodes
    from neuronplace.placement.health import DETECTED
    from neuronplace.placement.inventory import inventory_from_node
    from neuronplace.placement.ledger import Ledger

    config.load_kube_config(config_file=kubeconfig)
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    nodes = api.sanitize_for_serialization(core.list_node(label_selector=selector or None))["items"]
    pods = api.sanitize_for_serialization(core.list_pod_for_all_namespaces())["items"]
    # The Neuron DRA driver's nodes and the chips allocated claims hold (none without resource.k8s.io/v1).
    dra = dra_nodes(_resource_items(client.CustomObjectsApi(api), "resourceslices"))
    inventories = [
        inventory_from_node(node, dra.get(node["metadata"]["name"]), conditions or DETECTED) for node in nodes
    ]
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    for claim in _resource_items(client.CustomObjectsApi(api), "resourceclaims"):
        ledger.observe_claim(claim)
    ledger.learn_nodes(inventories)
    return node_maps(inventories, ledger), ledger.foreign()


def _resource_items(custom, plural: str) -> list[dict]:
    from kubernetes.client.rest import ApiException

    try:
        return custom.list_cluster_custom_object("resource.k8s.io", "v1", plural)["items"]
    except ApiException as error:
        if error.status == 404:
            return []
        raise


def leader_line(lease: str | None) -> str:
    """Who leads: the holder of the Lease ``NAMESPACE/NAME`` (None: the operator settings' default)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from neuronplace.operator.leader import describe
    from neuronplace.operator.settings import OperatorSettings

    if lease:
        namespace, _, name = lease.partition("/")
    else:
        settings = OperatorSettings.from_env()
        namespace, name = settings.lease_namespace(), settings.leader_election_id
    try:
        found = client.ApiClient().sanitize_for_serialization(
            client.CoordinationV1Api().read_namespaced_lease(name, namespace)
        )
    except ApiException as error:
        if error.status != 404:
            return f"leader: unknown (reading Lease {namespace}/{name}: HTTP {error.status})"
        found = None
    return describe(found, namespace, name)


def run(args: argparse.Namespace) -> int:
    from neuronplace.placement.coremap import render
    from neuronplace.placement.health import parse_unhealthy_conditions, watched

    if args.lease is not None and (args.lease.count("/") != 1 or "" in args.lease.split("/")):
        print(f"neuronplace cores: --lease must be NAMESPACE/NAME, got {args.lease!r}")
        return 2
    try:
        conditions = watched(parse_unhealthy_conditions(args.unhealthy_conditions))
    except ValueError as error:
        print(f"neuronplace cores: {error}", file=sys.stderr)
        return 2
    maps, _ = collect(args.kubeconfig or os.environ.get("KUBECONFIG"), args.selector, conditions)
    print(render(maps), end="")
    print(leader_line(args.lease))
    if args.png:
        render_png(maps, args.png)
        print(f"wrote {args.png}")
    return 0


def render_png(maps: Sequence[NodeMap], path: str) -> None:
    """The same map as a PNG (one row per node, one cell per core, a colour per pod)."""
    # Imported here: matplotlib comes with the test extra only, and only --png needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    widest = max((len(m.pods) for m in maps), default=1)
    fig, ax = plt.subplots(figsize=(max(6, widest * 0.35 + 3), max(2, len(maps) * 0.6 + 1)))
    palette = plt.get_cmap("tab20")
    colours: dict[str, object] = {}
    for row, node in enumerate(maps):
        y = len(maps) - 1 - row
        for core, (pod, exact) in enumerate(zip(node.pods, node.exact)):
            face: object
            if pod is None:
                face = "white"
            elif not exact:
                face = "lightgrey"
            else:
                face = colours.setdefault(pod, palette(len(colours) % 20))
            gap = 0.15 if core and core % node.cores_per_chip == 0 else 0
            ax.add_patch(
                Rectangle(
                    (core + gap * (core // node.cores_per_chip), y),
                    0.9,
                    0.8,
                    facecolor=face,
                    edgecolor="black",
                    linewidth=0.5,
                )
            )
        ax.text(-0.5, y + 0.4, node.name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.5, widest * 1.2)
    ax.set_ylim(-0.2, len(maps))
    ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black") for c in colours.values()]
    if handles:
        ax.legend(handles, list(colours), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
