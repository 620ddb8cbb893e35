"""The in-pod runtime: ``DataParallel`` with torch.neuron semantics, and the core-set grammar.

Imported inside inference pods. The core-set grammar and ``visible_cores`` never import
torch (the operator uses them too); ``DataParallel`` is loaded on first use.
"""

from neuronplace.runtime.coreset import CoreRange, format_core_set, parse_core_set

__all__ = ["CoreRange", "format_core_set", "parse_core_set"]
