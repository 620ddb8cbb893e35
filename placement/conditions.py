"""Reading ``status.conditions`` of any Kubernetes object (Pod, Node, NeuronInference). Pure.

One reader, so that "Ready" means the same thing everywhere: a condition counts only when its
``status`` is exactly ``"True"``; a missing condition is reported as missing, and each caller says
what missing means for it (a node that has not reported yet, a pod that has not started).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuronplace.placement.names import CONDITION_READY


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """The object's condition of ``type_``, or ``{}`` when it has none."""
    for entry in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(entry, Mapping) and entry.get("type") == type_:
            return entry
    return {}


def is_true(obj: Mapping[str, Any], type_: str) -> bool:
    """Whether the object's ``type_`` condition is ``True`` (missing counts as not)."""
    return condition(obj, type_).get("status") == "True"


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Whether the object's ``Ready`` condition is ``True``."""
    return is_true(obj, CONDITION_READY)
