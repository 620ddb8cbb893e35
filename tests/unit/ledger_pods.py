"""Pods as the operator creates them, for tests that feed a ledger.

A managed pod is controlled by its NeuronInference (UID included), carries the inference label and
its node-global range (in its spec's ``NEURONPLACE_NODE_CORES``, the only place the ledger trusts,
and in its annotations), requests exactly as many ``aws.amazon.com/neuroncore`` as the range has
cores, and carries the device plugin's ids for them: anything less is not counted as ours.
"""

from __future__ import annotations

from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    INFERENCE_LABEL,
    KIND,
    NEURONCORE_RESOURCE,
)
from neuronplace.runtime.coreset import CoreRange


def inference_uid(inference: str, namespace: str = "default") -> str:
    """The UID the test NeuronInference ``namespace/inference`` has."""
    return f"uid-{namespace}-{inference}"


def managed_pod(name, node, cores, inference="web", namespace="default", phase="Running") -> dict:
    """A live pod of the NeuronInference ``namespace/inference`` holding ``cores`` ("4-7") on ``node``."""
    core_range = CoreRange.parse(cores)
    amount = {NEURONCORE_RESOURCE: str(core_range.count)}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {INFERENCE_LABEL: inference},
            "annotations": {CORES_ANNOTATION: cores, AWS_NEURON_IDS: ",".join(map(str, core_range.ids))},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": inference,
                    "uid": inference_uid(inference, namespace),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "main", "env": [{"name": ENV_NODE_CORES, "value": cores}], "resources": {"limits": amount}}
            ],
        },
        "status": {"phase": phase},
    }
