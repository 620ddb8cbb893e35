"""``neuronplace demo``: the README's first command (`make demo` runs it).

Starts the local control plane with a small mixed fleet (building the binaries the first time,
with progress), installs the CRD, runs the operator, applies the examples (the repository's
``examples/``, shipped in the package as ``neuronplace.examples``), waits until every example is
placed and prints the per-node core map. The cluster and the operator keep running
afterwards, with the kubectl lines to explore them; ``--down`` tears everything down at the end
instead, and ``--stop`` tears down a demo left running earlier.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_NAME = "neuronplace-demo"
DEFAULT_FLEET = "inf2.48xlarge=3,inf1.6xlarge=1,trn1.32xlarge=1,trn2.48xlarge=1"
LIVENESS_PORT = 18480


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
    parser.add_argument("--fleet", default=DEFAULT_FLEET, help=f"simulated instances (default {DEFAULT_FLEET})")
    parser.add_argument(
        "--examples",
        metavar="FOLDER",
        help="folder of NeuronInference YAML files to apply (default: the examples shipped with neuronplace)",
    )
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the examples to be placed")
    parser.add_argument("--down", action="store_true", help="tear the cluster and operator down after the demo")
    parser.add_argument("--stop", action="store_true", help="only tear down a demo left running earlier")


def _say(line: str) -> None:
    print(f"==> {line}", file=sys.stderr, flush=True)


def example_files(folder: str | None = None) -> list[Path]:
    """What the demo applies: the YAML files of ``folder``, or by default the examples shipped in the
    package (found with importlib.resources, so a wheel install has them too)."""
    if folder is None:
        from neuronplace.local.examples import example_files as shipped

        return shipped()
    found = sorted(p for p in Path(folder).iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    if not found:
        raise FileNotFoundError(f"no YAML or JSON files in {folder}")
    return found


def _simulated(files: list[Path]) -> str:
    """The files' objects as one YAML stream, every NeuronInference also tolerating the simulated
    nodes' taint: the examples are written for EKS and tolerate only the Neuron taint."""
    import yaml

    from neuronplace.local.examples import on_simulated_nodes

    documents = [d for path in files for d in yaml.safe_load_all(path.read_text()) if d]
    return yaml.safe_dump_all([on_simulated_nodes(d) for d in documents], sort_keys=False)


def _operator(cluster):
    from neuronplace.local.operator_process import OperatorProcess

    # Its own session: the operator outlives this command, like the cluster; the pid file lets
    # `neuronplace demo --stop` (or --down) find it again.
    return OperatorProcess(
        cluster,
        Path(cluster.logs_dir) / "neuronplace-operator.log",
        port=LIVENESS_PORT,
        pid_file=Path(cluster.cluster_dir) / "neuronplace-operator.pid",
    )


def _stop_operator(cluster) -> None:
    from neuronplace.local.operator_process import stop_recorded

    stop_recorded(_operator(cluster).pid_file)


def _start_operator(cluster) -> None:
    from neuronplace.local.operator_process import recorded_pid

    operator = _operator(cluster)
    if recorded_pid(operator.pid_file) is not None:
        _say("the operator is already running")
        return
    operator.start()
    _say(f"operator running (pid {operator.pid}, log {operator.log_path})")


def _wait_placed(cluster, timeout: float) -> list[dict]:
    from neuronplace.placement.conditions import condition, is_ready
    from neuronplace.placement.names import CONDITION_PLACED

    deadline = time.monotonic() + timeout
    while True:
        items = json.loads(cluster.kubectl("get", "ninf", "-A", "-o", "json").stdout)["items"]
        pending = []
        for item in items:
            if not is_ready(item):
                placed = condition(item, CONDITION_PLACED)
                reason, message = placed.get("reason", "waiting"), placed.get("message", "")
                pending.append(f"{item['metadata']['name']} ({reason}: {message})")
        if not pending:
            return items
        if time.monotonic() > deadline:
            raise TimeoutError("not placed in time: " + "; ".join(pending))
        time.sleep(0.5)


def run(args: argparse.Namespace) -> int:
    from neuronplace.cli.cores import collect
    from neuronplace.local.cluster import LocalCluster
    from neuronplace.local.operator_process import install_crd
    from neuronplace.placement.coremap import render

    cluster = LocalCluster(args.name)
    if args.stop:
        _stop_operator(cluster)
        cluster.down()
        _say(f"demo {args.name} stopped and removed")
        return 0
    try:
        if cluster.exists():
            _say(f"reusing the running cluster {args.name}")
        else:
            _say(
                f"starting the local control plane {args.name} with {args.fleet} "
                "(the first run builds the binaries: about 8 minutes)"
            )
            cluster.up(fleet=args.fleet, progress=_say)
        _say("installing the NeuronInference CRD")
        install_crd(cluster)
        _say("starting the operator")
        _start_operator(cluster)
        files = example_files(args.examples)
        _say(f"applying {args.examples or ', '.join(path.name for path in files)} (tolerating kwok's taint)")
        cluster.kubectl("apply", "-n", "default", "-f", "-", input=_simulated(files))
        _say("waiting until every example is placed and ready")
        _wait_placed(cluster, args.timeout)
        print(cluster.kubectl("get", "ninf", "-A").stdout)
        maps, _ = collect(cluster.kubeconfig)
        print("NeuronCore map (one character per core, chips separated by spaces, '.' = free):\n")
        print(render(maps))
    except BaseException:
        if args.down:
            _stop_operator(cluster)
            cluster.down()
        raise
    if args.down:
        _stop_operator(cluster)
        cluster.down()
        _say("demo torn down")
        return 0
    print(f"""The cluster and the operator keep running. Explore:

  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.bin_dir}:$PATH
  kubectl get ninf                                  # replicas, cores, Placed/Ready/WaitingForCapacity reasons
  kubectl get pods -o wide -L neuronplace.io/replica
  kubectl describe ninf qwen-inf2                   # status.placements, conditions, events
  kubectl get pod qwen-inf2-0 -o jsonpath='{{.metadata.annotations}}'
  kubectl scale ninf qwen-inf2 --replicas=4 && neuronplace cores
  neuronplace demo --stop                           # stop the operator and remove the cluster
""")
    return 0
