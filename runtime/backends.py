"""Where a core's replica runs: ``cpu`` (simulated cores), ``cuda`` (GPUs) or ``neuron`` (NeuronCores).

A backend turns the model into one replica per core and says how many cores exist when neither
``NEURON_RT_VISIBLE_CORES`` nor ``NEURON_RT_NUM_CORES`` is set. Selection: the ``backend``
argument, else ``NEURONPLACE_BACKEND``, else automatic (neuron when torch-neuronx or torch-neuron
is installed, cuda when a GPU is available, cpu otherwise).

* ``cpu`` simulates NeuronCores so inference code can be developed anywhere: each core is a
  replica run by its own worker with an equal share of the CPU's intra-op threads
  (``cpus // visible cores``, at least 1), so C busy cores never oversubscribe the machine.
  ``NEURONPLACE_CPU_CORES`` sets how many cores the simulated node has (default: usable CPUs).
* ``cuda`` maps core ``i`` to device ``i % device_count``; cores sharing a device get their own
  stream. Inputs are copied to the device inside the core's worker and outputs come back to the
  host, so transfers overlap across cores.
* ``neuron`` delegates placement to the Neuron framework: each replica is pinned to its
  process-local core with ``experimental.set_neuron_cores(module, core, 1)``, so all of a model's
  graphs stay on one core. Choosing it without the framework installed raises ``BackendUnavailable``.

This module imports torch only when a backend needs it, so ``visible_cores`` stays torch-free
whenever the environment names the cores.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKEND_VAR = "NEURONPLACE_BACKEND"
CPU_CORES_VAR = "NEURONPLACE_CPU_CORES"
BACKEND_NAMES = ("cpu", "cuda", "neuron")
_NEURON_PACKAGES = ("torch_neuronx", "torch_neuron")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine (no GPU, no Neuron framework)."""


@dataclass
class Replica:
    """The model as placed on one core: ``core`` is the process-local index, ``global_core`` the
    id in the container's numbering (what ``NEURON_RT_VISIBLE_CORES`` names)."""

    core: int
    global_core: int
    module: Any
    # Intra-op threads the core's chunks run with; None leaves the caller's setting alone.
    intra_op_threads: int | None = None
    device: Any = None
    stream: Any = field(default=None, repr=False)

    def __call__(self, args: tuple, kwargs: dict):
        if self.device is None:
            return self.module(*args, **kwargs)
        return _run_on_cuda(self, args, kwargs)


def _run_on_cuda(replica: Replica, args: tuple, kwargs: dict):
    import torch

    from neuronplace.runtime.scatter_gather import map_tensors

    with torch.cuda.device(replica.device), torch.cuda.stream(replica.stream):
        args, kwargs = map_tensors((args, kwargs), lambda t: t.to(replica.device, non_blocking=True))
        output = replica.module(*args, **kwargs)
        # .to("cpu") waits for this stream only, so the other cores' kernels keep running.
        return map_tensors(output, lambda t: t.to("cpu"))


def _copies(model, count: int) -> list:
    """``count`` independent replicas; the first is the caller's model itself (no extra memory)."""
    return [model] + [copy.deepcopy(model) for _ in range(count - 1)]


@dataclass
class CpuBackend:
    """Simulated cores on the host CPU."""

    env: Mapping[str, str]
    name: str = "cpu"

    def total_cores(self) -> int:
        text = self.env.get(CPU_CORES_VAR)
        if text is None:
            return _usable_cpus()
        if not text.strip().isdigit() or int(text) < 1:
            raise ValueError(
                f"{CPU_CORES_VAR}={text!r} is invalid: expected a positive whole number of simulated cores"
            )
        return int(text)

    def replicate(self, model, cores: list[int], global_cores: list[int], visible_count: int) -> list[Replica]:
        # A core is a fixed share of the machine: divide by every core the process sees, not only
        # the ones this DataParallel uses, so throughput scales with the cores used.
        threads = max(1, _usable_cpus() // max(1, visible_count))
        return [
            Replica(core, global_core, module, intra_op_threads=threads)
            for core, global_core, module in zip(cores, global_cores, _copies(model, len(cores)))
        ]


@dataclass
class CudaBackend:
    """Cores mapped onto CUDA devices, one stream per core."""

    env: Mapping[str, str]
    name: str = "cuda"

    def __post_init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "backend 'cuda' was chosen but torch.cuda.is_available() is False on this machine; "
                f"choose 'cpu' (argument backend= or {BACKEND_VAR}=cpu)"
            )

    def total_cores(self) -> int:
        import torch

        return torch.cuda.device_count()

    def replicate(self, model, cores: list[int], global_cores: list[int], visible_count: int) -> list[Replica]:
        import torch

        devices = torch.cuda.device_count()
        replicas = []
        for core, global_core, module in zip(cores, global_cores, _copies(model, len(cores))):
            device = torch.device("cuda", core % devices)
            replicas.append(
                Replica(core, global_core, module.to(device), device=device, stream=torch.cuda.Stream(device))
            )
        return replicas


@dataclass
class NeuronBackend:
    """Real NeuronCores through torch-neuronx (Inf2/Trn) or torch-neuron (Inf1)."""

    env: Mapping[str, str]
    name: str = "neuron"
    framework: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for package in _NEURON_PACKAGES:
            if importlib.util.find_spec(package) is not None:
                self.framework = importlib.import_module(package)
                return
        raise BackendUnavailable(
            "backend 'neuron' was chosen but neither torch-neuronx nor torch-neuron is installed; install the "
            f"Neuron framework, or choose 'cpu' to simulate cores (argument backend= or {BACKEND_VAR}=cpu)"
        )

    def total_cores(self) -> int:
        import torch

        count = torch.classes.neuron.Runtime().get_nc_count()
        if count < 1:
            raise BackendUnavailable(
                "the Neuron runtime reports no NeuronCores; is the device visible in this container?"
            )
        return count

    def replicate(self, model, cores: list[int], global_cores: list[int], visible_count: int) -> list[Replica]:
        experimental = importlib.import_module(f"{self.framework.__name__}.experimental")
        place = getattr(experimental, "set_neuron_cores", None) or experimental.placement.set_neuron_cores
        replicas = []
        for core, global_core, module in zip(cores, global_cores, _copies(model, len(cores))):
            place(module, core, 1)
            replicas.append(Replica(core, global_core, module))
        return replicas


_BACKENDS = {"cpu": CpuBackend, "cuda": CudaBackend, "neuron": NeuronBackend}


def backend_name(name: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The backend to use: ``name``, else ``NEURONPLACE_BACKEND``, else the automatic choice."""
    env = os.environ if env is None else env
    source = "backend argument" if name is not None else BACKEND_VAR
    chosen = name if name is not None else env.get(BACKEND_VAR)
    if chosen is None:
        return _automatic()
    normalized = chosen.strip().lower() if isinstance(chosen, str) else None
    if normalized in ("", "auto"):
        return _automatic()
    if normalized not in _BACKENDS:
        raise ValueError(f"{source} {chosen!r} is not a backend; expected one of {', '.join(BACKEND_NAMES)} or 'auto'")
    return normalized


def select_backend(name: str | None = None, env: Mapping[str, str] | None = None):
    env = os.environ if env is None else env
    return _BACKENDS[backend_name(name, env)](env)


def _automatic() -> str:
    if any(importlib.util.find_spec(package) is not None for package in _NEURON_PACKAGES):
        return "neuron"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
