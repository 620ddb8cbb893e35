"""Runtime benchmark: DataParallel's per-call overhead, throughput scaling, and cores in flight.

Run: ``python benchmarks/runtime.py`` (``--quick`` for a shorter run). Prints three tables; every
figure in a table is measured in the same run, interleaved round by round, so a busy machine
slows all columns alike.

1. **Per-call overhead** for a trivial model (``Linear(8, 8)``, batch 2, 2 cores) over a direct
   call: neuronplace's ``DataParallel`` against a naive thread-pool scatter/gather (a persistent
   ``ThreadPoolExecutor`` with one worker per core, ``chunk`` + ``submit`` + ``cat``), the obvious
   design, which costs about 100 µs per call here. ``DataParallel`` appears twice: as it runs by
   itself (for a model this small its executor runs nearly every call *inline*, in the caller, one
   chunk after the other; the row says how many calls went which way), and with the *parallel* path
   forced for every call (chunks handed to the per-core workers), which is the overhead a call pays
   whenever the work is worth spreading. Target: at most 25 µs with 2 cores (for the first row).
2. **Throughput scaling** of a compute-bound model (an MLP of 1024-wide layers) at 1..N cores,
   N = the usable CPUs (each simulated core gets an equal share of the CPU), for chunks of 32, 128
   and 512 rows per core (about 4, 9 and 35 ms here). Target: at least 0.9·N for N up to the
   physical core count. Beside it, the same work on bare threads, which shows the scaling the
   machine allows at that moment. Each call ends when its slowest chunk does, and waking a thread
   costs about 0.1 ms on this VM, so short chunks scale less than long ones.
3. **Cores in flight**: the peak number of chunks running at once and the speed-up over one core,
   for a model whose chunk is 20 ms of device time (the calling thread sleeps, as it does while a
   NeuronCore computes), at 2..16 simulated cores. Every core should be busy. (No other
   implementation is measured here: torch_neuronx's DataParallel needs Neuron hardware.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from neuronplace.runtime import DataParallel


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def with_cores(count: int):
    """Simulate ``count`` visible cores on the cpu backend for the DataParallel built next."""
    os.environ["NEURONPLACE_BACKEND"] = "cpu"
    os.environ["NEURON_RT_VISIBLE_CORES"] = f"0-{count - 1}" if count > 1 else "0"


class NaiveThreadPool:
    """The baseline: scatter with ``chunk``, one pool task per chunk, wait, ``cat``."""

    def __init__(self, model, cores: int) -> None:
        self.model = model
        self.cores = cores
        self.pool = ThreadPoolExecutor(cores)

    def __call__(self, x):
        futures = [self.pool.submit(self.model, chunk) for chunk in x.chunk(self.cores)]
        return torch.cat([future.result() for future in futures])


def per_call_seconds(function, argument, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function(argument)
    return (time.perf_counter() - started) / calls


def overhead_table(rounds: int, calls: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8).eval()
    batch = torch.rand(2, 8)
    with_cores(2)
    chosen = DataParallel(model)
    forced = DataParallel(model)
    # The executor decides per call between inline and parallel; this one is told to go parallel
    # every time, so each call pays the hand-off to the workers and back.
    forced._executor.force_parallel = True
    contenders = {
        "direct call": model,
        "naive thread pool": NaiveThreadPool(model, 2),
        "DataParallel, as it chooses": chosen,
        "DataParallel, parallel forced": forced,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.no_grad():
        for function in contenders.values():  # warm up; DataParallel learns the model's cost
            per_call_seconds(function, batch, 500)
        for _ in range(rounds):
            for name, function in contenders.items():
                samples[name].append(per_call_seconds(function, batch, calls))
    direct = statistics.median(samples["direct call"])
    print(f"\n1. Per-call overhead: Linear(8, 8), batch 2, 2 cores ({rounds} rounds x {calls} calls, medians)")
    print(f"   {'':32}{'µs/call':>10}{'overhead µs':>14}{'vs naive':>10}{'best round: overhead µs':>26}  path")
    naive_overhead = statistics.median(samples["naive thread pool"]) - direct
    best_direct = min(samples["direct call"])
    for name, values in samples.items():
        seconds = statistics.median(values)
        overhead = seconds - direct
        ratio = f"{overhead / naive_overhead:.2f}x" if name != "direct call" else ""
        best = (min(values) - best_direct) * 1e6
        executor = getattr(contenders[name], "_executor", None)
        path = (
            ""
            if executor is None
            else f"{executor.inline_runs} calls inline, {executor.parallel_runs} in parallel"
            + (" (inline)" if executor.inline_runs > executor.parallel_runs else " (parallel)")
        )
        print(f"   {name:32}{seconds * 1e6:10.1f}{overhead * 1e6:14.1f}{ratio:>10}{best:26.1f}  {path}")
    print("   (target: overhead <= 25 µs as DataParallel chooses)")


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


def bare_threads_rate(model, count: int, rows: int, seconds: float) -> float:
    """Rows/s of ``count`` plain threads each running the model on ``rows`` rows with one intra-op
    thread: the most this machine gives right now, with no DataParallel involved."""
    done = [0] * count
    stop = time.perf_counter() + seconds

    def work(slot: int) -> None:
        torch.set_num_threads(1)
        batch = torch.rand(rows, 1024)
        with torch.no_grad():
            while time.perf_counter() < stop:
                model(batch)
                done[slot] += rows

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def data_parallel_rate(parallel, rows: int, seconds: float) -> tuple[float, float]:
    """(rows/s, CPUs used) of back-to-back calls with ``rows`` rows per core."""
    batch = torch.rand(rows * len(parallel.device_ids), 1024)
    with torch.no_grad():
        parallel(batch)  # warm
        calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            parallel(batch)
            calls += 1
    wall = time.perf_counter() - started
    return calls * batch.shape[0] / wall, (time.process_time() - cpu_started) / wall


def scaling_table(rounds: int, seconds_per_sample: float, rows_per_core: list[int]) -> None:
    cpus = usable_cpus()
    model = mlp()
    # All DataParallels see the same cores, so each core is the same share of the CPU.
    with_cores(cpus)
    parallels = {count: DataParallel(model, device_ids=list(range(count))) for count in range(1, cpus + 1)}
    print(f"\n2. Throughput scaling: 4 x Linear(1024, 1024), {cpus} usable CPUs ({rounds} rounds, medians)")
    print("   Every round measures 1 core and N cores back to back and takes their ratio, so a busy")
    print("   machine slows both alike. 'bare threads' runs the same work on plain threads without")
    print("   DataParallel and without a per-call join: the scaling this machine allows right now.")
    print("   'CPUs used' is the process's CPU time per wall second at N cores.")
    print(
        f"   {'rows/core':>10}{'chunk ms':>10}{'cores':>7}{'rows/s':>10}{'scaling':>9}{'target':>8}"
        f"{'bare threads':>14}{'CPUs used':>11}"
    )
    for rows in rows_per_core:
        # Per core count N > 1: paired ratios to 1 core, rates, bare-thread ratios, CPUs used.
        ratios: dict[int, list[float]] = {count: [] for count in range(2, cpus + 1)}
        bare_ratios: dict[int, list[float]] = {count: [] for count in ratios}
        rates: dict[int, list[float]] = {count: [] for count in ratios}
        used: dict[int, list[float]] = {count: [] for count in ratios}
        single: list[float] = []
        for _ in range(rounds):
            for count, paired in ratios.items():
                one, _ = data_parallel_rate(parallels[1], rows, seconds_per_sample)
                many, cpu = data_parallel_rate(parallels[count], rows, seconds_per_sample)
                bare_one = bare_threads_rate(model, 1, rows, seconds_per_sample)
                bare_many = bare_threads_rate(model, count, rows, seconds_per_sample)
                single.append(one)
                rates[count].append(many)
                paired.append(many / one)
                bare_ratios[count].append(bare_many / bare_one)
                used[count].append(cpu)
        if not single:  # one CPU: nothing to scale to, only the 1-core rate
            single.append(data_parallel_rate(parallels[1], rows, seconds_per_sample)[0])
        one = statistics.median(single)
        print(f"   {rows:>10}{1000 * rows / one:10.1f}{1:>7}{one:10.0f}{1:8.2f}x{0.9:7.1f}x{1:13.2f}x{1:11.2f}")
        for count, paired in ratios.items():
            print(
                f"   {'':>10}{'':>10}{count:>7}{statistics.median(rates[count]):10.0f}"
                f"{statistics.median(paired):8.2f}x{0.9 * count:7.1f}x"
                f"{statistics.median(bare_ratios[count]):13.2f}x{statistics.median(used[count]):11.2f}"
            )


def cores_in_flight_table(core_counts: list[int]) -> None:
    print("\n3. Cores in flight: a chunk is 20 ms of device time (the calling thread sleeps)")
    print(f"   {'cores':>6}{'peak chunks in flight':>24}{'speed-up vs 1 core':>21}")
    for cores in core_counts:
        lock = threading.Lock()
        state = {"now": 0, "peak": 0}

        class DeviceTime(torch.nn.Module):
            # Class attributes: shared by the replicas DataParallel copies, as one device's counters.
            shared_lock = lock
            counts = state

            def forward(self, x):
                with self.shared_lock:
                    self.counts["now"] += 1
                    self.counts["peak"] = max(self.counts["peak"], self.counts["now"])
                time.sleep(0.02)
                with self.shared_lock:
                    self.counts["now"] -= 1
                return x

        with_cores(cores)
        parallel = DataParallel(DeviceTime())
        batch = torch.zeros(cores, 4)
        parallel(batch)
        calls = 5
        started = time.perf_counter()
        for _ in range(calls):
            parallel(batch)
        elapsed = (time.perf_counter() - started) / calls
        speedup = cores * 0.02 / elapsed
        print(f"   {cores:>6}{state['peak']:>24}{speedup:20.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {usable_cpus()} usable CPUs, load average {os.getloadavg()[0]:.1f} at start")
    overhead_table(rounds=5 if args.quick else 15, calls=2000)
    scaling_table(
        rounds=3 if args.quick else 7, seconds_per_sample=0.3 if args.quick else 0.5, rows_per_core=[32, 128, 512]
    )
    cores_in_flight_table([2, 4, 8, 16])
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other work on this machine slows every column)")


if __name__ == "__main__":
    main()
