"""The data-parallel hints the operator writes into a pod's env (``spec.dataParallel``). Never imports torch.

``NEURONPLACE_DP_DIM``, ``NEURONPLACE_DP_DYNAMIC_BATCHING`` (``true``/``false``) and
``NEURONPLACE_DP_NUM_WORKERS`` give ``DataParallel`` its defaults inside an operator-made pod, so
the same inference code follows the resource's settings. Arguments and attributes the code sets
itself always win over the hints. Malformed values raise ``ValueError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from neuronplace.runtime.coreset import DP_DIM_VAR, DP_DYNAMIC_BATCHING_VAR, DP_NUM_WORKERS_VAR

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class DataParallelHints:
    """Defaults for ``DataParallel``; ``None`` means no hint (use the documented default)."""

    dim: int | None = None
    dynamic_batching: bool | None = None
    num_workers: int | None = None


def hints_from_env(env: Mapping[str, str] | None = None) -> DataParallelHints:
    env = os.environ if env is None else env
    return DataParallelHints(
        dim=_whole_number(env, DP_DIM_VAR, minimum=0),
        dynamic_batching=_boolean(env, DP_DYNAMIC_BATCHING_VAR),
        num_workers=_whole_number(env, DP_NUM_WORKERS_VAR, minimum=1),
    )


def _whole_number(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    text = env.get(name)
    if text is None or not text.strip():
        return None
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < minimum:
        raise ValueError(f"{name}={text!r} is invalid: expected a whole number >= {minimum}")
    return int(stripped)


def _boolean(env: Mapping[str, str], name: str) -> bool | None:
    text = env.get(name)
    if text is None or not text.strip():
        return None
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{name}={text!r} is invalid: expected 'true' or 'false'")
    return value
