"""``neuronplace cores``: the live NeuronCore map of a cluster (text, or a PNG with ``--png``).

Also a kubectl plugin: the package installs ``kubectl-neuronplace``, so ``kubectl neuronplace cores``
works wherever it is on PATH. The map is rebuilt the way the operator rebuilds its ledger: from the
nodes and the pods themselves, with one difference: with no list of the NeuronInferences at hand,
any pod whose controller is a NeuronInference counts as managed (the operator also checks that it
knows that resource, by UID). Nodes whose claims do not add up get a line per pod saying why.
"""

from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Pods controlled by any NeuronInference count as placed by neuronplace (the operator also checks "
        "that it knows the resource's UID); nodes whose claims do not add up get an 'inconsistent:' line per pod."
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument(
        "--selector", "-l", default="", help="only nodes with these labels, e.g. 'neuronplace.io/pool=a'"
    )
    parser.add_argument("--png", metavar="FILE", help="also write the map as a PNG image")


def collect(kubeconfig: str | None = None, selector: str = ""):
    """(node maps, foreign holdings) read live from the cluster."""
    from kubernetes import client, config

    from neuronplace.placement.coremap import node_maps
    from neuronplace.placement.inventory import inventory_from_node
    from neuronplace.placement.ledger import Ledger

    config.load_kube_config(config_file=kubeconfig)
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    nodes = api.sanitize_for_serialization(core.list_node(label_selector=selector or None))["items"]
    pods = api.sanitize_for_serialization(core.list_pod_for_all_namespaces())["items"]
    inventories = [inventory_from_node(node) for node in nodes]
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    ledger.learn_nodes(inventories)
    return node_maps(inventories, ledger), ledger.foreign()


def run(args: argparse.Namespace) -> int:
    from neuronplace.placement.coremap import render, render_png

    maps, _ = collect(args.kubeconfig or os.environ.get("KUBECONFIG"), args.selector)
    print(render(maps), end="")
    if args.png:
        render_png(maps, args.png)
        print(f"wrote {args.png}")
    return 0
