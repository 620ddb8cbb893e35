"""Run chunks on their cores: inline in the caller when that is cheaper, else on every core at once.

Handing a chunk to another Python thread costs tens of microseconds here (48 µs for a queue round trip
between two Python threads, measured on a 2-vCPU VM), more than a whole tiny model call. So the executor measures, and decides per
call which way is cheaper:

* the cost of a row, timed around every inline call (call time / rows; the median of the last
  few, so one preempted call on a busy machine does not flip the decision). The decision is
  cached and made afresh every ``_REESTIMATE_EVERY`` calls, or at once when a new cost is far
  from the cached one (the model or the batch changed);
* the overhead of parallel dispatch, from real parallel calls: their wall time minus the compute
  the busiest core needed (the no-op round trip timed when the workers start is the floor).

Inline costs every chunk in sequence; parallel costs the busiest core's chunks plus the
overhead. In a parallel call, the chunks of cores 1.. go to those cores' persistent workers and
the caller computes core 0's chunks meanwhile, so all cores compute at once (ATen and TorchScript
release the GIL) and each call pays one thread hand-off fewer (48 µs or more on such a VM).
The first call always goes parallel, so a model that blocks or is slow is never serialised while
its cost is unknown. Chunk times measured in parallel calls count only when they are long (at
least ``_TRUSTED_HANDOFFS`` round trips): short ones are inflated by GIL contention, so they
trigger an inline probe instead (at once when nothing is known yet, else every ``_PROBE_EVERY``
calls). Wall time is measured, not CPU time, because a real NeuronCore's chunk is device time
during which the calling thread sleeps.

Every core has its own queue and at least one worker, and chunk ``k`` runs on core
``k % cores``: with C cores, C chunks are in flight. (torch_neuronx's own code keeps 2 in flight
whatever the core count: a public benchmark of it measured 2.0x on 8 and 12 cores.)
A failing chunk's exception is re-raised in the caller with its type, its original traceback
text and the real global core id (torch_neuronx reported the chunk index: aws-neuron-sdk#486).
"""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections import deque
from contextlib import contextmanager
from queue import SimpleQueue

import torch

from neuronplace.runtime.backends import Replica

# Estimates are medians of the last few samples.
_SAMPLES = 5
_HANDOFF_SAMPLES = 7
# A chunk measured in a worker is trusted only when it took at least this many round trips.
_TRUSTED_HANDOFFS = 8
_PROBE_EVERY = 32
# The cached (cost per row, parallel overhead) pair is recomputed at least this often.
_REESTIMATE_EVERY = 16
# The overhead a decision assumes is at most this many hand-offs. Parallel calls measured on a
# busy machine look slow (two threads share what CPU there is), which once made a 12 ms-per-chunk
# model run inline on one core for good; inline is for work comparable to a hand-off.
_MAX_OVERHEAD_HANDOFFS = 8


def _median(samples) -> float | None:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] if ordered else None


class CoreExecutor:
    """Persistent workers for a list of replicas (one per core) and the inline/parallel choice."""

    def __init__(self, replicas: list[Replica], workers_per_core: int, call_chunk) -> None:
        self.replicas = replicas
        self._call_chunk = call_chunk  # (replica, args, kwargs, rows) -> output
        self._workers_per_core = workers_per_core
        self._queues: list[SimpleQueue] | None = None
        self._running = [0]  # workers per core now; a list so the finalizer sees changes
        self._lock = threading.Lock()
        self.handoff_seconds: float | None = None
        self._row_costs: deque[float] = deque(maxlen=_SAMPLES)
        # (wall seconds, rows on the busiest core) of recent parallel calls.
        self._parallel_calls: deque[tuple[float, int]] = deque(maxlen=_SAMPLES)
        self._needs_probe = False
        self._calls = 0
        self._estimate: tuple[float, float] | None = None
        self.parallel_runs = 0
        self.inline_runs = 0
        # Every call with more than one chunk goes to the workers, whatever it costs: what the
        # runtime benchmark sets to measure the parallel path's own overhead.
        self.force_parallel = False
        # Every duration the choice rests on is read from this clock (wall time; see above).
        self.clock = time.perf_counter

    # ---- configuration -------------------------------------------------------------------------
    def set_workers_per_core(self, count: int) -> None:
        """Grow or shrink every core's workers; queues stay, so no chunk in flight is stranded."""
        with self._lock:
            if self._queues is not None:
                running = self._running[0]
                if count > running:
                    self._add_workers(self._queues, count - running)
                else:
                    _stop_queues(self._queues, running - count)
                self._running[0] = count
            self._workers_per_core = count

    # ---- estimates -----------------------------------------------------------------------------
    @property
    def seconds_per_row(self) -> float | None:
        """Measured cost of one row of a chunk; ``None`` before any trusted measurement."""
        return _median(self._row_costs)

    def parallel_overhead(self, seconds_per_row: float) -> float:
        """Seconds a parallel call spends beyond its busiest core's compute (from the hand-off
        floor to ``_MAX_OVERHEAD_HANDOFFS`` hand-offs)."""
        floor = self.handoff_seconds or 0.0
        overheads = [wall - rows * seconds_per_row for wall, rows in self._parallel_calls]
        return min(max(floor, _median(overheads) or 0.0), _MAX_OVERHEAD_HANDOFFS * floor)

    # ---- running -------------------------------------------------------------------------------
    @contextmanager
    def caller_threads(self):
        """The calling thread, for one DataParallel call, uses a core's share of intra-op threads.

        It computes core 0's chunks, and its scatter and gather must not open OpenMP teams wider
        than that share either: the spare team threads spin-wait after every parallel region,
        taking the CPU the other cores' workers are computing on.
        """
        threads = self.replicas[0].intra_op_threads
        previous = torch.get_num_threads()
        if threads is None or threads == previous:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def run_inline(self, chunks: list[tuple], total_rows: int) -> list:
        """Run ``(args, kwargs, rows)`` chunks one after another in the caller, chunk ``k`` on core ``k % cores``."""
        self.inline_runs += 1
        replicas = self.replicas
        cores = len(replicas)
        call = self._call_chunk
        outputs: list = []
        started = self.clock()
        try:
            for args, kwargs, rows in chunks:
                outputs.append(call(replicas[len(outputs) % cores], args, kwargs, rows))
        except Exception as error:  # KeyboardInterrupt and friends pass through untouched
            index = len(outputs)
            _ChunkFailure(error, traceback.format_exc(), replicas[index % cores], index).reraise()
        self._add_row_cost((self.clock() - started) / max(total_rows, 1))
        return outputs

    def run(self, chunks: list[tuple], total_rows: int) -> list:
        """Run ``(args, kwargs, rows)`` chunks (chunk ``k`` on core ``k % cores``); their outputs in order."""
        cores = len(self.replicas)
        used = min(cores, len(chunks))
        # The first chunk is the largest, so this bounds the rows of the busiest core.
        busiest = chunks[0][2] * -(-len(chunks) // cores)
        if used == 1 or (not self.force_parallel and self._inline_is_cheaper(total_rows, busiest)):
            return self.run_inline(chunks, total_rows)
        self.parallel_runs += 1
        queues = self._ensure_workers()
        started = self.clock()
        replies: SimpleQueue = SimpleQueue()
        # Grad and inference mode are thread-local: the workers must run in the caller's.
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        # Cores 1.. go to their workers first so they start at once; the caller runs core 0's
        # chunks itself instead of sleeping: one thread hand-off fewer per call.
        for core_position in range(1, used):
            core_chunks = [(index, *chunks[index]) for index in range(core_position, len(chunks), cores)]
            queues[core_position].put((self, core_chunks, replies, modes))
        results: list = [None] * len(chunks)
        for index in range(0, len(chunks), cores):
            results[index] = self._run_one(index, *chunks[index])
        for _ in range(used - 1):
            for index, outcome in replies.get():
                results[index] = outcome
        self._parallel_calls.append((self.clock() - started, busiest))
        self._estimate = None
        for result in results:
            if isinstance(result, _ChunkFailure):
                result.reraise()
        return results

    def _inline_is_cheaper(self, total_rows: int, busiest: int) -> bool:
        if self.handoff_seconds is None:
            return False  # the workers have never run: the first call goes parallel
        self._calls += 1
        if self._needs_probe and (not self._row_costs or self._calls % _PROBE_EVERY == 0):
            self._needs_probe = False
            return True
        estimate = self._estimate
        if estimate is None or self._calls % _REESTIMATE_EVERY == 0:
            per_row = self.seconds_per_row
            if per_row is None:
                return False
            estimate = self._estimate = (per_row, self.parallel_overhead(per_row))
        per_row, overhead = estimate
        # Inline runs every row in sequence; parallel runs the busiest core's rows plus the overhead.
        return (total_rows - busiest) * per_row < overhead

    def _run_one(self, index: int, args, kwargs, rows: int):
        """A worker's chunk: its output, or the failure to re-raise in the caller."""
        replica = self.replicas[index % len(self.replicas)]
        started = self.clock()
        try:
            output = self._call_chunk(replica, args, kwargs, rows)
        except BaseException as error:  # re-raised in the caller; a worker must never die
            return _ChunkFailure(error, traceback.format_exc(), replica, index)
        elapsed = self.clock() - started
        if self.handoff_seconds is not None and elapsed < _TRUSTED_HANDOFFS * self.handoff_seconds:
            self._needs_probe = True
        else:
            self._add_row_cost(elapsed / max(rows, 1))
        return output

    def _add_row_cost(self, seconds: float) -> None:
        self._row_costs.append(seconds)
        estimate = self._estimate
        # A cost far from the cached estimate (the model or the batch changed) re-decides at once.
        if estimate is not None and not 0.5 * estimate[0] < seconds < 2 * estimate[0]:
            self._estimate = None

    # ---- workers -------------------------------------------------------------------------------
    def _ensure_workers(self) -> list[SimpleQueue]:
        queues = self._queues
        if queues is not None:
            return queues
        with self._lock:
            if self._queues is None:
                self._queues = self._start_workers()
            return self._queues

    def _start_workers(self) -> list[SimpleQueue]:
        queues: list[SimpleQueue] = [SimpleQueue() for _ in self.replicas]
        self._add_workers(queues, self._workers_per_core)
        self._running[0] = self._workers_per_core
        self.handoff_seconds = _measure_handoff(queues[0], self.clock)
        # Workers hold only their queue, so a dropped DataParallel stops them.
        weakref.finalize(self, _stop_all, queues, self._running)
        return queues

    def _add_workers(self, queues: list[SimpleQueue], count: int) -> None:
        for replica, queue in zip(self.replicas, queues):
            for _ in range(count):
                threading.Thread(
                    target=_worker_loop,
                    args=(queue, replica.intra_op_threads),
                    name=f"neuronplace-core{replica.global_core}",
                    daemon=True,
                ).start()


class _ChunkFailure:
    def __init__(self, error: BaseException, text: str, replica: Replica, chunk: int) -> None:
        self.error = error
        self.text = text
        self.replica = replica
        self.chunk = chunk

    def reraise(self):
        message = (
            f"Caught {type(self.error).__name__} on NeuronCore {self.replica.global_core} "
            f"(device_ids index {self.replica.core}, chunk {self.chunk}).\n"
            f"Original {self.text.rstrip()}"
        )
        if isinstance(self.error, KeyError):
            # KeyError's str() is the repr of its argument; keep the text readable.
            message = _PlainMessage(message)
        try:
            rebuilt = type(self.error)(message)
        except Exception:
            rebuilt = None
        if not isinstance(rebuilt, BaseException) or str(rebuilt) != str(message):
            # Types whose constructor takes something else keep their own object and get a note.
            self.error.add_note(message)
            self.error.global_core = self.replica.global_core  # type: ignore[attr-defined]  # documented extra attribute
            raise self.error
        rebuilt.global_core = self.replica.global_core  # type: ignore[attr-defined]
        raise rebuilt from self.error


class _PlainMessage(str):
    def __repr__(self) -> str:
        return str(self)


def _worker_loop(queue: SimpleQueue, threads: int | None) -> None:
    if threads:
        # OpenMP's thread count is per calling thread, so this only limits this core's worker.
        torch.set_num_threads(threads)
    while True:
        task = queue.get()
        if task is None:
            return
        executor, chunks, replies, (grad, inference) = task
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            outcomes = [(chunk[0], executor._run_one(*chunk)) for chunk in chunks]
        replies.put(outcomes)
        del task, executor, chunks, replies, outcomes


def _measure_handoff(queue: SimpleQueue, clock) -> float:
    """Median seconds (by ``clock``) for a round trip to a worker and back with no work in it."""
    samples = []
    for _ in range(_HANDOFF_SAMPLES):
        replies: SimpleQueue = SimpleQueue()
        started = clock()
        queue.put((_NoWork, [], replies, (False, False)))
        replies.get()
        samples.append(clock() - started)
    return sorted(samples)[len(samples) // 2]


class _NoWork:
    pass


def _stop_queues(queues: list[SimpleQueue], workers_per_core: int) -> None:
    """Stop that many workers of every core (each takes one ``None`` after the work before it)."""
    for queue in queues:
        for _ in range(workers_per_core):
            queue.put(None)


def _stop_all(queues: list[SimpleQueue], running: list[int]) -> None:
    _stop_queues(queues, running[0])
