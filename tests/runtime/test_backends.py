"""Backend selection: argument, then NEURONPLACE_BACKEND, then automatic; clear errors otherwise."""

import pytest

from neuronplace.runtime.backends import BackendUnavailable, backend_name, select_backend

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

HAS_NEURON = any(__import__("importlib.util").util.find_spec(p) for p in ("torch_neuronx", "torch_neuron"))


def test_argument_wins_over_the_environment():
    assert backend_name("cpu", env={"NEURONPLACE_BACKEND": "neuron"}) == "cpu"
    assert backend_name(None, env={"NEURONPLACE_BACKEND": " CPU "}) == "cpu"


@pytest.mark.skipif(HAS_NEURON or torch.cuda.is_available(), reason="automatic choice differs on accelerators")
def test_automatic_choice_is_cpu_without_accelerators():
    assert backend_name(None, env={}) == "cpu"
    assert backend_name("auto", env={}) == "cpu"
    assert select_backend(env={}).name == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "neuronx", "cpu0", 3])
def test_unknown_backend_names_raise_value_error(bad):
    with pytest.raises(ValueError) as caught:
        backend_name(bad, env={})
    assert repr(bad) in str(caught.value) and "cpu, cuda, neuron" in str(caught.value)
    with pytest.raises(ValueError, match="NEURONPLACE_BACKEND"):
        backend_name(None, env={"NEURONPLACE_BACKEND": "tpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_choosing_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailable, match=r"torch\.cuda\.is_available"):
        select_backend("cuda", env={})


@pytest.mark.skipif(HAS_NEURON, reason="a Neuron framework is installed here")
def test_choosing_neuron_without_the_framework_is_a_clear_error(monkeypatch):
    with pytest.raises(BackendUnavailable, match="torch-neuronx"):
        select_backend("neuron", env={})
    # The same through DataParallel and the environment variable.
    from neuronplace.runtime import DataParallel

    monkeypatch.setenv("NEURONPLACE_BACKEND", "neuron")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1")
    with pytest.raises(BackendUnavailable):
        DataParallel(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bad", ["0", "-2", "four", ""])
def test_simulated_core_count_is_validated(bad):
    with pytest.raises(ValueError, match="NEURONPLACE_CPU_CORES"):
        select_backend("cpu", env={"NEURONPLACE_CPU_CORES": bad}).total_cores()


def test_cpu_replicas_are_independent_copies_with_a_thread_share():
    model = torch.nn.Linear(2, 2)
    replicas = select_backend("cpu", env={}).replicate(model, [0, 1, 2], [5, 6, 7], visible_count=3)
    assert [r.global_core for r in replicas] == [5, 6, 7]
    assert replicas[0].module is model
    assert replicas[1].module is not model and replicas[1].module.weight is not model.weight
    assert torch.equal(replicas[2].module.weight, model.weight)
    assert all(r.intra_op_threads >= 1 for r in replicas)
