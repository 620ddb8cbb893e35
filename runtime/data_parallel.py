"""``DataParallel``: torch.neuron.DataParallel's semantics on cpu, cuda or neuron.

``DataParallel(model, device_ids=None, dim=0)`` replicates ``model`` on the process's cores,
scatters each batch along ``dim``, runs the chunks on all cores at once and gathers the outputs,
as torch.neuron documents it. It accepts eager ``nn.Module``s, TorchScript (traced, scripted, or loaded — a path
is loaded for you), ``torch.export`` programs and their ``.module()``.

Dynamic batching is on for ``dim == 0`` when the model is eligible (all traced tensor inputs
share their dim-0 size); a model with a known traced batch ``B`` then runs each chunk in pieces of
``B`` (see ``dynamic_batching``), as the Neuron runtime does. With it off (``dim != 0``, an
ineligible model, or ``disable_dynamic_batching()``) the documented rule
``input.shape[dim] / len(device_ids) == B`` is enforced whenever ``B`` is known: read from an
in-memory trace or export, or passed as ``traced_batch_size`` (models loaded with
``torch.jit.load`` do not carry it).
"""

from __future__ import annotations

import os
import warnings

import torch

from neuronplace.runtime import jit
from neuronplace.runtime.backends import select_backend
from neuronplace.runtime.cores import normalize_device_ids, visible_cores
from neuronplace.runtime.dynamic_batching import run_in_traced_batches
from neuronplace.runtime.hints import hints_from_env
from neuronplace.runtime.models import batch_dims_agree, traced_input_shapes, traced_size
from neuronplace.runtime.parallel_apply import CoreExecutor
from neuronplace.runtime.scatter_gather import (
    batch_size,
    chunk_bounds,
    flat_batch_size,
    gather,
    scatter,
    scatter_flat,
)

# torch_neuronx's sentinel for "the documented default split".
DEFAULT_SPLIT = -1
# Chunk layouts remembered per batch size (serving sees few distinct sizes).
_LAYOUT_CACHE = 64


class DataParallel(torch.nn.Module):
    """Data parallelism over NeuronCores (or simulated cores, or GPUs).

    Args:
        model: the model to replicate (see the module docstring for the accepted forms).
        device_ids: ints or ``'nc:#'``, zero-based within this process's visible cores
            (``NEURON_RT_VISIBLE_CORES``); ``None`` uses every visible core.
        dim: the dimension the batch is scattered along (default 0, or the pod's
            ``NEURONPLACE_DP_DIM`` hint; see ``neuronplace.runtime.hints``).
        traced_batch_size: the size along ``dim`` the model was traced/compiled with, for models
            that do not carry it (loaded TorchScript, eager models compiled elsewhere).
        backend: ``'cpu'``, ``'cuda'``, ``'neuron'`` or ``None`` (``NEURONPLACE_BACKEND``, else automatic).

    Attributes:
        num_workers: worker threads (default ``2 * cores``), spread over the cores; every core gets
            at least one, so all cores stay busy whatever the value.
        split_size: rows per chunk; ``-1`` (default) means ``divmod(N, cores)`` with the remainder
            on the first chunks. Chunks beyond the core count go round-robin over the cores.
        device_ids: the process-local core indices in use; ``core_ids`` are the same cores in the
            container's numbering (what ``NEURON_RT_VISIBLE_CORES`` names).
    """

    def __init__(
        self,
        model,
        device_ids=None,
        dim: int | None = None,
        *,
        traced_batch_size: int | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        # The operator's hints (spec.dataParallel → pod env) fill in what the caller left unset.
        hints = hints_from_env()
        if dim is None:
            dim = 0 if hints.dim is None else hints.dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"dim must be a non-negative int, got {dim!r}")
        if traced_batch_size is not None and (
            isinstance(traced_batch_size, bool) or not isinstance(traced_batch_size, int) or traced_batch_size < 1
        ):
            raise ValueError(f"traced_batch_size must be a positive int, got {traced_batch_size!r}")
        model = _as_module(model)
        chosen = select_backend(backend)
        visible = visible_cores(backend=chosen.name)
        self.module = model
        self.dim = dim
        self.device_ids = normalize_device_ids(device_ids, len(visible))
        self.core_ids = [visible[index] for index in self.device_ids]
        self.backend = chosen.name
        self.split_size = DEFAULT_SPLIT

        shapes = traced_input_shapes(model)
        self.traced_batch_size = traced_batch_size if traced_batch_size is not None else traced_size(shapes, dim)
        self.dynamic_batching = dim == 0 and batch_dims_agree(shapes)
        if dim != 0:
            warnings.warn(
                f"DataParallel: dynamic batching is disabled because dim={dim} (it needs dim=0); "
                "input.shape[dim] / len(device_ids) must equal the traced size along dim",
                stacklevel=2,
            )
        elif not self.dynamic_batching:
            warnings.warn(
                f"DataParallel: dynamic batching cannot be enabled: the traced tensor inputs {shapes} do not share "
                "their dim-0 size; input.shape[0] / len(device_ids) must equal the traced batch",
                stacklevel=2,
            )

        replicas = chosen.replicate(model, self.device_ids, self.core_ids, len(visible))
        self._num_workers = hints.num_workers or 2 * len(self.device_ids)
        self._layouts: dict[tuple, tuple[list[tuple[int, int]], list[int]]] = {}
        self._executor = CoreExecutor(replicas, self._workers_per_core(self._num_workers), self._call_chunk)
        if hints.dynamic_batching is False:
            self.disable_dynamic_batching()

    # ---- attributes ----------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        return self._num_workers

    @num_workers.setter
    def num_workers(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"num_workers must be a positive int, got {value!r}")
        self._num_workers = value
        self._executor.set_workers_per_core(self._workers_per_core(value))

    def _workers_per_core(self, workers: int) -> int:
        return max(1, -(-workers // len(self.device_ids)))

    def disable_dynamic_batching(self) -> None:
        """Turn dynamic batching off: chunks must then be exactly the traced batch."""
        self.dynamic_batching = False

    def train(self, mode: bool = True):
        super().train(mode)
        for replica in self._executor.replicas:
            replica.module.train(mode)
        return self

    # ---- inference -----------------------------------------------------------------------------
    def forward(self, *inputs, **kwargs):
        # The common call, positional plain tensors, skips the recursive walk (the
        # whole per-call budget is 25 µs).
        flat = not kwargs and (
            type(inputs[0]) is torch.Tensor if len(inputs) == 1 else all(type(item) is torch.Tensor for item in inputs)
        )
        rows = flat_batch_size(inputs, self.dim) if flat else batch_size((inputs, kwargs), self.dim)
        with self._executor.caller_threads():
            return self._forward(inputs, kwargs, rows, flat)

    def _forward(self, inputs: tuple, kwargs: dict, rows: int | None, flat: bool):
        if not rows:
            # No tensor to split, or an empty batch: nothing to parallelise.
            return self._executor.run_inline([(inputs, kwargs, 0)], 0)[0]
        bounds, lengths = self._chunk_layout(rows)
        cores = len(self.device_ids)
        if len(bounds) % cores:
            warnings.warn(
                f"DataParallel: {len(bounds)} chunk(s) on {cores} cores leaves cores idle; make input.shape[{self.dim}] "
                f"({rows}) a multiple of the core count for full use",
                stacklevel=5,  # past nn.Module's call wrappers and _forward, to the caller's line
            )
        if len(bounds) == 1:
            return self._executor.run_inline([(inputs, kwargs, rows)], rows)[0]
        if flat and len(inputs) == 1:
            pieces = inputs[0].split_with_sizes(lengths, self.dim)
            chunks = [((piece,), kwargs, length) for piece, length in zip(pieces, lengths)]
        elif flat:
            pieces = scatter_flat(inputs, lengths, self.dim)
            chunks = [(args, kwargs, length) for args, length in zip(pieces, lengths)]
        else:
            pieces = scatter((inputs, kwargs), bounds, self.dim)
            chunks = [(args, chunk_kwargs, length) for (args, chunk_kwargs), length in zip(pieces, lengths)]
        return gather(self._executor.run(chunks, rows), self.dim)

    def _chunk_layout(self, rows: int) -> tuple[list[tuple[int, int]], list[int]]:
        """``(bounds, lengths)`` of the chunks for ``rows`` rows, validated; cached per setting."""
        key = (rows, self.split_size, self.dynamic_batching, self.traced_batch_size)
        layout = self._layouts.get(key)
        if layout is None:
            bounds = self._chunk_bounds(rows)
            if len(self._layouts) >= _LAYOUT_CACHE:
                self._layouts.clear()
            layout = self._layouts[key] = (bounds, [length for _, length in bounds])
        return layout

    def _chunk_bounds(self, rows: int) -> list[tuple[int, int]]:
        split = None if self.split_size in (DEFAULT_SPLIT, None) else self.split_size
        cores = len(self.device_ids)
        traced = self.traced_batch_size
        if not self.dynamic_batching and traced is not None:
            chunk = split if split is not None else rows / cores
            if chunk != traced or rows % traced:
                raise ValueError(
                    f"dynamic batching is disabled, so input.shape[{self.dim}] / len(device_ids) must equal the traced "
                    f"batch: got {rows} / {cores} = {rows / cores:g} (chunks of {chunk:g}), traced batch is {traced}; "
                    f"pass a batch of {traced * cores} or enable dynamic batching"
                )
        return chunk_bounds(rows, cores, split)

    def _call_chunk(self, replica, args, kwargs, rows):
        traced = self.traced_batch_size
        if self.dynamic_batching and traced is not None and rows:
            return run_in_traced_batches(replica, args, kwargs, rows, traced)
        if replica.device is None:
            return replica.module(*args, **kwargs)  # one call frame fewer on the hot path
        return replica(args, kwargs)


def _as_module(model):
    if isinstance(model, (str, os.PathLike)):
        return jit.load(os.fspath(model))
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if not callable(model):
        raise ValueError(
            f"DataParallel needs a model (nn.Module, TorchScript, ExportedProgram or a path), got {model!r}"
        )
    return model
