"""Scatter a batch into chunks along ``dim`` and gather the chunks' outputs back.

Scatter follows torch.neuron's documented split: ``divmod(N, cores)`` rows per chunk
with the remainder going to the first chunks (5 rows on 4 cores → 2,1,1,1), fewer rows than cores
→ one chunk per row, and with ``split_size`` set ``ceil(N / split_size)`` chunks. Containers are
walked recursively; every tensor is split the same way, so all tensors must agree on ``N``
(torch.nn's scatter silently truncates to the shortest instead). Non-tensor leaves and 0-d tensors
cannot be split and go to every chunk.

Gather rebuilds each container with its own type (tuple, list, dict, namedtuple, dataclass),
concatenates tensors along ``dim``, stacks 0-d tensors into a vector (with a warning), keeps
``None`` and returns non-tensor leaves once when every chunk agrees (the hole PyTorch leaves open,
pytorch#41327); leaves that differ come back as a list with one value per chunk.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch


def chunk_bounds(rows: int, cores: int, split_size: int | None = None) -> list[tuple[int, int]]:
    """``(start, length)`` of every chunk of ``rows`` rows, per the documented split."""
    if rows <= 0:
        return []
    if split_size is not None:
        if split_size < 1:
            raise ValueError(f"split_size must be a positive int (or -1/None for the default), got {split_size!r}")
        return [(start, min(split_size, rows - start)) for start in range(0, rows, split_size)]
    base, remainder = divmod(rows, cores)
    bounds = []
    start = 0
    for index in range(min(cores, rows)):
        length = base + (1 if index < remainder else 0)
        bounds.append((start, length))
        start += length
    return bounds


def is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields") and hasattr(obj, "_asdict")


def _is_dataclass_instance(obj) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _init_fields(obj):
    return [field.name for field in dataclasses.fields(obj) if field.init]


def batch_size(obj, dim: int) -> int | None:
    """The size along ``dim`` shared by every splittable tensor in ``obj``; ``None`` if it has none.

    Raises ``ValueError`` naming both sizes when two tensors disagree, or when a tensor has
    too few dimensions to be split along ``dim``.
    """
    found: list[tuple[int, tuple[int, ...]]] = []
    _collect_sizes(obj, dim, found)
    if not found:
        return None
    size, shape = found[0]
    for other_size, other_shape in found[1:]:
        if other_size != size:
            raise ValueError(
                f"cannot scatter along dim={dim}: input tensors disagree on its size "
                f"({tuple(shape)} has {size}, {tuple(other_shape)} has {other_size}); every tensor input "
                "must carry the same batch"
            )
    return size


def _collect_sizes(obj, dim, found) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            return
        if obj.dim() <= dim:
            raise ValueError(
                f"cannot scatter a tensor of shape {tuple(obj.shape)} along dim={dim}: it has only {obj.dim()} dimension(s)"
            )
        found.append((obj.shape[dim], obj.shape))
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _collect_sizes(item, dim, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect_sizes(item, dim, found)
    elif _is_dataclass_instance(obj):
        for name in _init_fields(obj):
            _collect_sizes(getattr(obj, name), dim, found)


def flat_batch_size(tensors: tuple, dim: int) -> int | None:
    """``batch_size`` for a flat tuple of tensors, without the recursive walk."""
    size = None
    for tensor in tensors:
        if tensor.dim() == 0:
            continue
        if tensor.dim() <= dim or (size is not None and tensor.shape[dim] != size):
            return batch_size(tensors, dim)  # let the general walk name the problem
        size = tensor.shape[dim]
    return size


def scatter_flat(tensors: tuple, lengths: list[int], dim: int) -> list[tuple]:
    """``scatter`` for a flat tuple of tensors, given the chunk lengths: one ``split`` per tensor."""
    # split_with_sizes is the direct binding; Tensor.split goes through a Python wrapper first.
    columns = [
        tensor.split_with_sizes(lengths, dim) if tensor.dim() else (tensor,) * len(lengths) for tensor in tensors
    ]
    return list(zip(*columns)) if columns else [() for _ in lengths]


def scatter(obj, bounds: list[tuple[int, int]], dim: int) -> list:
    """``obj`` cut into ``len(bounds)`` chunks along ``dim`` (views, no copies); ``bounds`` cover the batch."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            return [obj] * len(bounds)
        return list(obj.split_with_sizes([length for _, length in bounds], dim))
    if is_namedtuple(obj):
        return [type(obj)(*parts) for parts in _transpose(obj, bounds, dim)]
    if isinstance(obj, (tuple, list)):
        return [type(obj)(parts) for parts in _transpose(obj, bounds, dim)]
    if isinstance(obj, dict):
        columns = _transpose(list(obj.values()), bounds, dim)
        return [type(obj)(zip(obj.keys(), parts)) for parts in columns]
    if _is_dataclass_instance(obj):
        names = _init_fields(obj)
        columns = _transpose([getattr(obj, name) for name in names], bounds, dim)
        return [dataclasses.replace(obj, **dict(zip(names, parts))) for parts in columns]
    return [obj] * len(bounds)


def _transpose(items, bounds, dim) -> list[list]:
    per_item = [scatter(item, bounds, dim) for item in items]
    return [list(parts) for parts in zip(*per_item)] if per_item else [[] for _ in bounds]


def gather(outputs: list, dim: int):
    """Combine per-chunk ``outputs`` (in chunk order) into one output of the same structure."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        if first.dim() and len(outputs) > 1:
            try:
                return torch.cat(outputs, dim)  # the common case, without the checks below
            except (TypeError, RuntimeError):
                pass  # let the checks name the problem
        return _gather_tensors(outputs, dim)
    if first is None:
        if any(output is not None for output in outputs):
            raise ValueError("cannot gather outputs: some chunks returned None and others did not")
        return None
    _require_same_type(outputs)
    if isinstance(first, dict):
        keys = list(first.keys())
        for output in outputs[1:]:
            if set(output.keys()) != set(keys):
                raise ValueError(
                    f"cannot gather dict outputs with different keys: {sorted(map(repr, keys))} vs "
                    f"{sorted(map(repr, output.keys()))}"
                )
        return type(first)((key, gather([output[key] for output in outputs], dim)) for key in keys)
    if isinstance(first, (tuple, list)):
        lengths = {len(output) for output in outputs}
        if len(lengths) != 1:
            raise ValueError(f"cannot gather {type(first).__name__} outputs of different lengths {sorted(lengths)}")
        parts = [gather(list(column), dim) for column in zip(*outputs)]
        return type(first)(*parts) if is_namedtuple(first) else type(first)(parts)
    if _is_dataclass_instance(first):
        names = _init_fields(first)
        return dataclasses.replace(first, **{name: gather([getattr(o, name) for o in outputs], dim) for name in names})
    return first if all(_same_leaf(first, output) for output in outputs[1:]) else list(outputs)


def _gather_tensors(outputs, dim):
    if not all(isinstance(output, torch.Tensor) for output in outputs):
        raise ValueError(
            "cannot gather outputs: some chunks returned a tensor and others "
            f"{sorted({type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)})}"
        )
    if all(output.dim() == 0 for output in outputs):
        warnings.warn(
            "the model returned 0-d (scalar) tensors, which cannot be concatenated; DataParallel returns them "
            "as a vector with one value per chunk",
            stacklevel=4,
        )
        return torch.stack(outputs)
    if len(outputs) == 1:
        return outputs[0]
    return torch.cat(outputs, dim)


def _require_same_type(outputs) -> None:
    kind = type(outputs[0])
    for output in outputs[1:]:
        if type(output) is not kind:
            raise ValueError(f"cannot gather outputs of different types: {kind.__name__} and {type(output).__name__}")


def _same_leaf(a, b) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # e.g. numpy arrays: == is elementwise and bool() is ambiguous
        return False


def map_tensors(obj, function):
    """``obj`` with ``function`` applied to every tensor, containers rebuilt with their own type."""
    if isinstance(obj, torch.Tensor):
        return function(obj)
    if is_namedtuple(obj):
        return type(obj)(*(map_tensors(item, function) for item in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(item, function) for item in obj)
    if isinstance(obj, dict):
        return type(obj)((key, map_tensors(value, function)) for key, value in obj.items())
    if _is_dataclass_instance(obj):
        return dataclasses.replace(
            obj, **{name: map_tensors(getattr(obj, name), function) for name in _init_fields(obj)}
        )
    return obj
