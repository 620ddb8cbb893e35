"""DataParallel with real models: the five documented examples, accepted model forms, errors, concurrency.

Every example compares DataParallel's output with the model run on the whole batch. Cores are
simulated by the cpu backend; NEURON_RT_VISIBLE_CORES sets how many there are.
"""

import threading
import time
import warnings

import pytest

torch = pytest.importorskip("torch")

from neuronplace.runtime import DataParallel, jit  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-3")
    monkeypatch.setenv("NEURONPLACE_BACKEND", "cpu")
    monkeypatch.delenv("NEURON_RT_NUM_CORES", raising=False)


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


class RowConv(torch.nn.Module):
    """Convolves along the width only, so every row along dim 2 is independent of the others."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, kernel_size=(1, 3), padding=(0, 1))

    def forward(self, x):
        return self.conv(x) + 1


def close(a, b):
    return torch.allclose(a, b, atol=1e-5)


@pytest.fixture(params=["traced", "eager"])
def classifier(request):
    model = Classifier().eval()
    if request.param == "traced":
        return model, jit.trace(model, torch.rand(1, 6))
    return model, model


# ---- the five documented examples ------------------------------------------------------------


def test_default_usage_uses_every_visible_core(classifier):
    reference, model = classifier
    parallel = DataParallel(model)
    assert parallel.device_ids == [0, 1, 2, 3]
    batch = torch.rand(5, 6)
    with torch.no_grad():
        assert close(parallel(batch), reference(batch))


def test_specified_cores_by_int_and_by_name(classifier, monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-7")
    reference, model = classifier
    batch = torch.rand(6, 6)
    for device_ids in ([0, 1, 2], ["nc:0", "nc:1", "nc:2"]):
        parallel = DataParallel(model, device_ids=device_ids)
        assert parallel.device_ids == [0, 1, 2]
        assert parallel.core_ids == [4, 5, 6]  # zero-based within this process's cores
        with torch.no_grad():
            assert close(parallel(batch), reference(batch))


@pytest.mark.parametrize("form", ["traced", "eager"])
def test_dim_2_disables_dynamic_batching_and_enforces_the_rule(form):
    reference = RowConv().eval()
    image = torch.rand(1, 3, 8, 8)
    model = jit.trace(reference, image) if form == "traced" else reference
    with pytest.warns(UserWarning, match="dynamic batching is disabled because dim=2"):
        parallel = DataParallel(model, device_ids=[0, 1], dim=2, traced_batch_size=None if form == "traced" else 8)
    assert parallel.traced_batch_size == 8
    batched = torch.rand(1, 3, 2 * 8, 8)  # image_batched.shape[dim] / len(device_ids) == image.shape[dim]
    with torch.no_grad():
        assert close(parallel(batched), reference(batched))
        with pytest.raises(ValueError, match=r"12 / 2 = 6.*traced batch is 8"):
            parallel(torch.rand(1, 3, 12, 8))


@pytest.mark.parametrize("batch_size", [2, 3, 4, 5, 6])
def test_dynamic_batching_accepts_any_batch(classifier, batch_size):
    reference, model = classifier
    parallel = DataParallel(model)
    assert parallel.dynamic_batching
    batch = torch.rand(batch_size, 6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2, 3, 5 and 6 rows leave cores idle; that warning is tested below
        assert close(parallel(batch), reference(batch))


def test_disabled_dynamic_batching_rejects_the_wrong_batch_and_runs_the_right_one(classifier):
    reference, model = classifier
    eager = model is reference
    parallel = DataParallel(model, device_ids=[0, 1], traced_batch_size=1 if eager else None)
    parallel.disable_dynamic_batching()
    assert not parallel.dynamic_batching
    with torch.no_grad():
        with pytest.raises(ValueError) as caught:
            parallel(torch.rand(4, 6))  # 4 / 2 != 1
        assert "4 / 2 = 2" in str(caught.value) and "traced batch is 1" in str(caught.value)
        batch = torch.rand(2, 6)  # 2 / 2 == 1
        assert close(parallel(batch), reference(batch))


# ---- model forms ---------------------------------------------------------------------------------


def test_traced_batch_size_is_read_from_the_trace_and_taken_as_an_argument(tmp_path):
    reference = Classifier().eval()
    traced = jit.trace(reference, torch.rand(3, 6))
    assert DataParallel(traced).traced_batch_size == 3
    path = tmp_path / "model.pt"
    jit.save(traced, str(path))
    loaded = jit.load(str(path))
    assert DataParallel(loaded).traced_batch_size is None  # a loaded graph does not carry its sizes
    parallel = DataParallel(loaded, device_ids=[0, 1], traced_batch_size=3)
    parallel.disable_dynamic_batching()
    with torch.no_grad():
        batch = torch.rand(6, 6)
        assert close(parallel(batch), reference(batch))
        with pytest.raises(ValueError, match="traced batch is 3"):
            parallel(torch.rand(4, 6))


def test_loaded_scripted_and_path_models_run_without_jit_deprecation_warnings(tmp_path):
    reference = Classifier().eval()
    path = tmp_path / "model.pt"
    jit.save(jit.trace(reference, torch.rand(1, 6)), str(path))
    batch = torch.rand(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FutureWarning from torch.jit fails the test
        for model in (jit.load(str(path)), jit.script(reference), str(path), path):
            with torch.no_grad():
                assert close(DataParallel(model)(batch), reference(batch))


def test_exported_programs_with_a_static_batch_run_any_batch_through_dynamic_batching():
    reference = Classifier().eval()
    program = torch.export.export(reference, (torch.rand(2, 6),))
    for model in (program, program.module()):
        parallel = DataParallel(model)
        assert parallel.traced_batch_size == 2 and parallel.dynamic_batching
        for rows in (1, 3, 7, 8):  # every chunk is cut into padded pieces of exactly 2 rows
            batch = torch.rand(rows, 6)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert close(parallel(batch), reference(batch))


def test_exported_program_with_a_dynamic_batch_has_no_traced_size():
    reference = Classifier().eval()
    batch_dim = torch.export.Dim("batch")
    program = torch.export.export(reference, (torch.rand(4, 6),), dynamic_shapes=({0: batch_dim},))
    parallel = DataParallel(program)
    assert parallel.traced_batch_size is None
    batch = torch.rand(8, 6)
    with torch.no_grad():
        assert close(parallel(batch), reference(batch))


def test_ineligible_traced_model_warns_and_keeps_dynamic_batching_off():
    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x.sum(0, keepdim=True) + y.sum(0, keepdim=True)

    with pytest.warns(UserWarning, match="dynamic batching cannot be enabled"):
        parallel = DataParallel(jit.trace(TwoInputs(), (torch.rand(2, 3), torch.rand(4, 3))))
    assert not parallel.dynamic_batching


# ---- inputs, outputs and attributes ----------------------------------------------------------------


def test_keyword_and_nested_inputs_are_scattered_and_outputs_rebuilt():
    class Nested(torch.nn.Module):
        def forward(self, pair, scale=1.0, mask=None):
            left, right = pair
            return {"sum": (left + right) * scale * mask, "label": "fixed", "nothing": None}

    parallel = DataParallel(Nested())
    x, y, mask = torch.rand(8, 2), torch.rand(8, 2), torch.rand(8, 1)
    result = parallel((x, y), scale=2.0, mask=mask)
    assert close(result["sum"], (x + y) * 2.0 * mask)
    assert result["label"] == "fixed" and result["nothing"] is None


def test_under_used_cores_warn():
    parallel = DataParallel(Classifier().eval())
    with torch.no_grad():
        with pytest.warns(UserWarning, match="leaves cores idle"):
            parallel(torch.rand(3, 6))  # 3 chunks on 4 cores
        parallel.split_size = 3
        with pytest.warns(UserWarning, match="leaves cores idle"):
            parallel(torch.rand(9, 6))  # ceil(9 / 3) = 3 chunks
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parallel(torch.rand(12, 6))  # 4 chunks of 3: no warning


def test_split_size_chunks_go_round_robin_over_the_cores(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "6-7")
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen[int(x[0, 0])] = (self, x.shape[0])
            time.sleep(0.005)
            return x

    parallel = DataParallel(Recorder())
    assert parallel.split_size == -1
    parallel.split_size = 2
    batch = torch.arange(10.0).reshape(10, 1)
    with pytest.warns(UserWarning, match="5 chunk"):
        assert torch.equal(parallel(batch), batch)
    # ceil(10 / 2) = 5 chunks of 2 rows; chunk k starts at row 2k and runs on core 6 + k % 2,
    # that is on that core's replica (the caller computes core 6's chunks, a worker core 7's).
    core_of_replica = {id(replica.module): replica.global_core for replica in parallel._executor.replicas}
    assert sorted(core_of_replica.values()) == [6, 7]
    assert sorted(seen) == [0, 2, 4, 6, 8]
    for first_row, (replica, rows) in seen.items():
        chunk = first_row // 2
        assert rows == 2
        assert core_of_replica[id(replica)] == 6 + chunk % 2


def test_empty_batch_and_single_core_short_circuit():
    reference = Classifier().eval()
    with torch.no_grad():
        empty = DataParallel(reference)(torch.rand(0, 6))
        assert empty.shape == (0, 3)
        single = DataParallel(reference, device_ids=[2])
        batch = torch.rand(5, 6)
        assert close(single(batch), reference(batch))
        assert single._executor.parallel_runs == 0


def test_num_workers_defaults_to_twice_the_cores_and_validates():
    parallel = DataParallel(Classifier(), device_ids=[0, 1, 2])
    assert parallel.num_workers == 6
    parallel.num_workers = 1  # fewer than cores: every core still gets a worker
    with torch.no_grad():
        assert parallel(torch.rand(6, 6)).shape == (6, 3)
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="num_workers"):
            parallel.num_workers = bad


def test_changing_num_workers_resizes_every_core_and_keeps_serving(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "40-41")  # thread names no other test uses

    def workers():
        names = [t.name for t in threading.enumerate() if t.is_alive()]
        return names.count("neuronplace-core40"), names.count("neuronplace-core41")

    def settle(expected):
        deadline = time.monotonic() + 10
        while workers() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return workers()

    before = workers()
    parallel = DataParallel(torch.nn.Linear(3, 3))
    batch = torch.rand(4, 3)
    parallel(batch)  # the first call starts the workers: 2 x 2 cores by default
    assert settle((before[0] + 2, before[1] + 2)) == (before[0] + 2, before[1] + 2)
    parallel.num_workers = 8
    assert settle((before[0] + 4, before[1] + 4)) == (before[0] + 4, before[1] + 4)
    parallel.num_workers = 2
    assert settle((before[0] + 1, before[1] + 1)) == (before[0] + 1, before[1] + 1)
    parallel._executor._needs_probe = False
    parallel._executor._estimate = None
    parallel._executor._row_costs.clear()  # nothing known: the next call goes to the workers
    runs = parallel._executor.parallel_runs
    assert parallel(batch).shape == (4, 3)
    assert parallel._executor.parallel_runs == runs + 1


@pytest.mark.parametrize("bad", [-1, 1.0, "0", True])
def test_bad_dim_raises(bad):
    with pytest.raises(ValueError, match="dim"):
        DataParallel(Classifier(), dim=bad)


@pytest.mark.parametrize("device_ids", [[4], ["nc:9"], [0, 0], ["core0"], "nc:0"])
def test_bad_device_ids_raise_naming_the_entry(device_ids):
    with pytest.raises(ValueError, match=r"0\.\.3"):
        DataParallel(Classifier(), device_ids=device_ids)


def test_eval_and_train_reach_every_replica():
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Dropout(0.5))
    parallel = DataParallel(model).eval()
    batch = torch.rand(8, 6)
    with torch.no_grad():
        assert close(parallel(batch), model(batch))  # no replica drops anything
    parallel.train()
    assert all(replica.module.training for replica in parallel._executor.replicas)


def test_workers_use_their_share_of_intra_op_threads(monkeypatch):
    # 4 simulated cores on this machine's CPUs: each core gets cpus // 4 threads (at least 1), and
    # the caller's own setting is left as it was.
    import os

    expected = max(1, len(os.sched_getaffinity(0)) // 4)
    seen = []

    class ThreadCounter(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    parallel = DataParallel(ThreadCounter())
    for _ in range(3):
        parallel(torch.rand(4, 1))
    assert set(seen) == {expected}
    assert torch.get_num_threads() == before


# ---- errors from the model ------------------------------------------------------------------------


class FailsOnNegativeRows(torch.nn.Module):
    def forward(self, x):
        if (x < 0).any():
            raise KeyError("negative row")
        return x * 2


# Chunk 0 is computed by the calling thread, the others by their cores' workers.
@pytest.mark.parametrize("failing_chunk", [2, 0])
def test_worker_exception_keeps_type_traceback_and_global_core(monkeypatch, failing_chunk):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-7")
    parallel = DataParallel(FailsOnNegativeRows())
    batch = torch.ones(4, 1)
    batch[failing_chunk] = -1  # chunk k → device_ids index k → global core 4 + k
    with pytest.raises(KeyError) as caught:
        parallel(batch)
    message = str(caught.value)
    assert f"NeuronCore {4 + failing_chunk}" in message and f"chunk {failing_chunk}" in message
    assert 'raise KeyError("negative row")' in message  # the original traceback text
    assert isinstance(caught.value.__cause__, KeyError)
    assert caught.value.global_core == 4 + failing_chunk
    assert torch.equal(parallel(torch.ones(4, 1)), torch.full((4, 1), 2.0))  # the workers survived


def test_inline_exception_names_the_core_too(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-7")
    parallel = DataParallel(FailsOnNegativeRows(), device_ids=[1])
    with pytest.raises(KeyError, match="NeuronCore 5"):
        parallel(-torch.ones(2, 1))


def test_exception_types_with_other_constructors_keep_their_object():
    class Custom(Exception):
        def __init__(self, code, detail):
            super().__init__(code, detail)
            self.code = code

    class Raises(torch.nn.Module):
        def forward(self, x):
            raise Custom(42, "detail")

    with pytest.raises(Custom) as caught:
        DataParallel(Raises())(torch.ones(4, 1))
    assert caught.value.code == 42
    assert any("NeuronCore" in note for note in caught.value.__notes__)


# ---- every core busy --------------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [4, 8])
def test_all_cores_run_at_once(monkeypatch, cores):
    # Each chunk waits until every core has a chunk in flight: only C concurrent chunks pass.
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", f"0-{cores - 1}")
    barrier = threading.Barrier(cores, timeout=20)

    class WaitsForAllCores(torch.nn.Module):
        def forward(self, x):
            barrier.wait()
            time.sleep(0.01)
            return x + 1

    parallel = DataParallel(WaitsForAllCores())
    for _ in range(3):  # later calls too: slow chunks are never run inline
        assert torch.equal(parallel(torch.zeros(cores, 2)), torch.ones(cores, 2))
    assert parallel._executor.inline_runs == 0


def test_concurrency_is_exactly_the_core_count_and_one_chunk_per_core():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "per_core": {}}

    class Counts(torch.nn.Module):
        def forward(self, x):
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1
            return x

    parallel = DataParallel(Counts())
    parallel.split_size = 1  # 12 chunks over 4 cores
    with torch.no_grad():
        assert parallel(torch.zeros(12, 1)).shape == (12, 1)
    assert state["peak"] == 4


class Ticks:
    """A clock that advances one microsecond each time it is read (from any thread): whatever the
    machine's load, a tiny model's call looks as cheap next to a thread hand-off as it is on an
    idle machine, so the choice it leads to is the same in every run."""

    def __init__(self) -> None:
        self.now = 0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += 1
            return self.now * 1e-6


def test_tiny_models_run_inline_once_their_cost_is_known():
    model = torch.nn.Linear(8, 8)
    parallel = DataParallel(model, device_ids=[0, 1])
    # A call costs one tick of the clock, a hand-off at least as much: inline is cheaper. (On the
    # wall clock a preempted inline call on a loaded machine made parallel look cheaper.)
    parallel._executor.clock = Ticks()
    batch = torch.rand(2, 8)
    with torch.no_grad():
        for _ in range(200):
            assert close(parallel(batch), model(batch))
    executor = parallel._executor
    assert executor.inline_runs > executor.parallel_runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_the_whole_batch(monkeypatch):
    monkeypatch.setenv("NEURONPLACE_BACKEND", "cuda")
    reference = Classifier().eval()
    parallel = DataParallel(Classifier().eval())
    batch = torch.rand(8, 6)
    with torch.no_grad():
        output = parallel(batch)
    assert output.device.type == "cpu"
    assert close(output, reference(batch))


def test_workers_run_in_the_callers_grad_and_inference_mode():
    model = torch.nn.Linear(4, 4)
    parallel = DataParallel(model)
    batch = torch.rand(8, 4)
    with torch.no_grad():
        assert not parallel(batch).requires_grad
    with torch.inference_mode():
        assert parallel(batch).is_inference()
    assert parallel(batch).requires_grad  # grad enabled, as in the caller


def test_a_model_that_turns_slow_is_parallelised_again():
    lock = threading.Lock()
    state = {"slow": False, "now": 0, "peak": 0}

    class Switches(torch.nn.Module):
        def forward(self, x):
            if not state["slow"]:
                return x
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1
            return x

    parallel = DataParallel(Switches(), device_ids=[0, 1])
    batch = torch.zeros(2, 1)
    for _ in range(100):
        parallel(batch)
    assert parallel._executor.inline_runs > 50  # cheap: run in the caller
    state["slow"] = True
    for _ in range(4):
        parallel(batch)
    assert state["peak"] == 2  # the measured cost sent the chunks back to both cores at once


def test_slow_looking_parallel_calls_do_not_send_heavy_chunks_inline():
    # On a busy machine parallel calls can measure far slower than their compute; a model whose
    # chunks cost many hand-offs must stay on every core anyway.
    parallel = DataParallel(torch.nn.Linear(4, 4), device_ids=[0, 1])
    executor = parallel._executor
    executor.handoff_seconds = 50e-6
    executor._row_costs.extend([100e-6] * 5)  # 128 rows: 12.8 ms per chunk
    executor._parallel_calls.extend([(0.040, 128)] * 5)  # walls of 40 ms measured under load
    assert executor.parallel_overhead(100e-6) == pytest.approx(8 * 50e-6)
    assert not executor._inline_is_cheaper(total_rows=256, busiest=128)
    # A tiny model's chunk (2 rows of 3 µs) is cheaper inline than any hand-off.
    executor._row_costs.clear()
    executor._row_costs.extend([3e-6] * 5)
    executor._estimate = None
    assert executor._inline_is_cheaper(total_rows=4, busiest=2)


def test_force_parallel_sends_every_call_to_the_workers(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1")
    parallel = DataParallel(torch.nn.Linear(3, 3).eval())
    batch = torch.rand(4, 3)
    with torch.no_grad():
        for _ in range(40):  # a tiny model: the executor soon runs it inline
            parallel(batch)
    assert parallel._executor.inline_runs > 0
    parallel._executor.force_parallel = True
    runs, inline = parallel._executor.parallel_runs, parallel._executor.inline_runs
    with torch.no_grad():
        for _ in range(10):
            assert torch.equal(parallel(batch), parallel.module(batch))
    assert parallel._executor.parallel_runs == runs + 10 and parallel._executor.inline_runs == inline
