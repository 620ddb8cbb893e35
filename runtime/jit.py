"""``torch.jit.trace`` / ``save`` / ``load`` without torch 2.15's deprecation warnings.

torch 2.15 marks the TorchScript entry points deprecated (a ``FutureWarning`` on every call), yet
TorchScript is the form torch-neuron compiles to and the form users ship. These wrappers silence
exactly that warning, for exactly the duration of the call, and nothing else.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

# The messages read "`torch.jit.trace` is deprecated. Please switch to ...".
_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextmanager
def quiet_jit_deprecation():
    """Suppress the TorchScript deprecation ``FutureWarning`` inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        yield


def trace(model, example_inputs, **kwargs):
    with quiet_jit_deprecation():
        return torch.jit.trace(model, example_inputs, **kwargs)


def script(model, **kwargs):
    with quiet_jit_deprecation():
        return torch.jit.script(model, **kwargs)


def save(model, destination, **kwargs) -> None:
    with quiet_jit_deprecation():
        torch.jit.save(model, destination, **kwargs)


def load(source, **kwargs):
    with quiet_jit_deprecation():
        return torch.jit.load(source, **kwargs)
