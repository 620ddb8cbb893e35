"""What a model says about the batch it was traced with.

torch-neuron compiles for a fixed batch, and DataParallel's rules refer to it
(``input.shape[dim] / len(device_ids) == compilation_input.shape[dim]``). Where the model carries
its example input sizes we read them: an in-memory ``torch.jit.trace`` graph types its inputs with
complete sizes, and a ``torch.export`` program records each input's shape (a symbolic size there
means the dimension was exported as dynamic). Scripted models and models loaded with
``torch.jit.load`` carry no sizes; eager models have none; for those the caller may pass
``traced_batch_size``.
"""

from __future__ import annotations

import torch


def traced_input_shapes(model) -> list[tuple[int | None, ...]] | None:
    """Shapes of the model's tensor inputs as traced, ``None`` for a dynamic size; ``None`` if unknown."""
    if isinstance(model, torch.jit.TracedModule):
        return _traced_graph_shapes(model)
    if isinstance(model, torch.fx.GraphModule):
        return _exported_shapes(model)
    return None


def _traced_graph_shapes(model) -> list[tuple[int | None, ...]] | None:
    shapes: list[tuple[int | None, ...]] = []
    for value in model.graph.inputs():
        kind = value.type()
        if kind.kind() != "TensorType":
            continue  # `self`, and inputs that are not plain tensors
        sizes = kind.sizes()
        if sizes is None:
            return None
        shapes.append(tuple(sizes))
    return shapes or None


def _exported_shapes(model) -> list[tuple[int | None, ...]] | None:
    shapes: list[tuple[int | None, ...]] = []
    for node in model.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shapes.append(tuple(size if isinstance(size, int) else None for size in value.shape))
    return shapes or None


def traced_size(shapes: list[tuple[int | None, ...]] | None, dim: int) -> int | None:
    """The traced batch along ``dim``: the first tensor input's size there (the documented
    ``compilation_input.shape[dim]``); ``None`` when unknown or dynamic."""
    if not shapes or len(shapes[0]) <= dim:
        return None
    return shapes[0][dim]


def batch_dims_agree(shapes: list[tuple[int | None, ...]] | None) -> bool:
    """Dynamic batching needs every tensor input to share its dim-0 size (as in torch.neuron)."""
    return len({shape[0] for shape in shapes or () if shape}) <= 1
