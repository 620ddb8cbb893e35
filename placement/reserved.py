"""What a NeuronInference template may not carry because the operator writes it (pure).

The ledger, the device plugin and the operator's own bookkeeping read a pod's reserved labels and
annotations (``names.RESERVED_KEY_PREFIXES``, ``names.RESERVED_KEYS``) and its reserved env
(``names.RESERVED_ENV``, ``names.RESERVED_ENV_PREFIX``). Templates are copied onto every pod, so a
template carrying one would let its author speak for the operator: the capacity-request label on a
replica, a ``neuronplace.io/cores`` or ``AWS_NEURON_IDS`` the operator never gave, a
``NEURONPLACE_NODE_CORES`` env in a sidecar. The CRD's schema refuses the same keys
(``crd.reserved_key_rule``); this check catches objects that got past it, and names the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from neuronplace.placement.names import RESERVED_ENV, RESERVED_ENV_PREFIX, RESERVED_KEY_PREFIXES, RESERVED_KEYS


def is_reserved_key(key: str) -> bool:
    """Whether a pod label or annotation key is the operator's."""
    return key in RESERVED_KEYS or key.startswith(RESERVED_KEY_PREFIXES)


def is_reserved_env(name: str) -> bool:
    """Whether an env variable name is one the operator sets in a pod's containers."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX)


def _containers(pod_spec: Mapping) -> Iterator[tuple[str, Mapping]]:
    for field in ("containers", "initContainers"):
        for index, container in enumerate(pod_spec.get(field) or ()):
            if isinstance(container, Mapping):
                yield f"spec.template.spec.{field}[{index}]", container


def reserved_in_template(template: Any) -> str | None:
    """Why ``template`` may not be used because it carries a reserved key, or None."""
    if not isinstance(template, Mapping):
        return None
    metadata = template.get("metadata") or {}
    for kind in ("labels", "annotations"):
        keys = metadata.get(kind) if isinstance(metadata, Mapping) else None
        for key in keys if isinstance(keys, Mapping) else ():
            if is_reserved_key(str(key)):
                return (
                    f"spec.template.metadata.{kind} must not carry {key}: keys under "
                    f"{', '.join(RESERVED_KEY_PREFIXES)} and {', '.join(RESERVED_KEYS)} are the operator's"
                )
    pod_spec = template.get("spec")
    for where, container in _containers(pod_spec if isinstance(pod_spec, Mapping) else {}):
        for entry in container.get("env") or ():
            name = entry.get("name") if isinstance(entry, Mapping) else None
            if isinstance(name, str) and is_reserved_env(name):
                return (
                    f"{where}.env must not set {name}: the operator sets {', '.join(RESERVED_ENV)} and every "
                    f"{RESERVED_ENV_PREFIX}* variable itself"
                )
    return None
