"""Entry point of the ``neuronplace`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under neuronplace.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "local": ("local", "build, start, stop and list local control planes with simulated Neuron nodes"),
    "run": ("run", "run the operator against the current kubeconfig"),
    "demo": ("demo", "start a local cluster, run the operator, apply the shipped examples and show the core map"),
    "plan": ("plan", "dry-run placement for NeuronInference files on a fleet, without a cluster"),
    "cores": ("cores", "show the live NeuronCore map of a cluster"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="neuronplace", description="NeuronCore placement for Kubernetes.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported; the others get a bare parser for --help.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"neuronplace.cli.{module_name}")
            module.configure(sub)
            sub.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
