"""Dynamic batching: run a chunk of any size on a model compiled for a fixed batch.

This is what the Neuron runtime does for a dynamically batched model, reproduced so code behaves
the same off Neuron hardware: a chunk of ``rows`` rows is cut into pieces of the traced batch
``B`` along dim 0, the last piece is padded to ``B`` by repeating its last row (real data, so
models that normalise do not see zeros), every piece runs, and the outputs are trimmed back to
``rows`` and concatenated. A chunk of exactly ``B`` rows runs as it is.
"""

from __future__ import annotations

import torch

from neuronplace.runtime.scatter_gather import chunk_bounds, gather, map_tensors, scatter


def run_in_traced_batches(call, args: tuple, kwargs: dict, rows: int, traced_batch: int):
    """``call(args, kwargs)`` over pieces of exactly ``traced_batch`` rows; outputs for ``rows`` rows."""
    if rows == traced_batch:
        return call(args, kwargs)
    bounds = chunk_bounds(rows, cores=1, split_size=traced_batch)
    pieces = scatter((args, kwargs), bounds, 0)
    outputs = []
    for (piece_args, piece_kwargs), (_, length) in zip(pieces, bounds):
        if length < traced_batch:
            padding = traced_batch - length
            padded_args, padded_kwargs = map_tensors((piece_args, piece_kwargs), lambda t, pad=padding: _pad(t, pad))
            output = call(padded_args, padded_kwargs)
            output = map_tensors(output, lambda t, keep=length: _trim(t, traced_batch, keep))
        else:
            output = call(piece_args, piece_kwargs)
        outputs.append(output)
    return gather(outputs, 0) if len(outputs) > 1 else outputs[0]


def _pad(tensor: torch.Tensor, padding: int) -> torch.Tensor:
    if tensor.dim() == 0:
        return tensor
    filler = tensor[-1:].expand(padding, *tensor.shape[1:])
    return torch.cat((tensor, filler), 0)


def _trim(tensor: torch.Tensor, traced_batch: int, length: int) -> torch.Tensor:
    # Only outputs that carry the batch on dim 0 hold padded rows.
    if tensor.dim() and tensor.shape[0] == traced_batch:
        return tensor[:length]
    return tensor
