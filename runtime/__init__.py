"""The in-pod runtime: ``DataParallel`` with torch.neuron semantics, and the core-set grammar.

Imported inside inference pods. The core-set grammar and ``visible_cores`` never import
torch (the operator uses them too); ``DataParallel`` is loaded on first use.
"""

from neuronplace.runtime.cores import visible_cores
from neuronplace.runtime.coreset import CoreRange, format_core_set, parse_core_set

__all__ = ["CoreRange", "DataParallel", "format_core_set", "parse_core_set", "visible_cores"]


def __getattr__(name: str):
    # Deferred so that importing the package (or its grammar) does not import torch.
    if name == "DataParallel":
        from neuronplace.runtime.data_parallel import DataParallel

        return DataParallel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
