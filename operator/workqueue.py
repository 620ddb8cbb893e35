"""The work queue: which inferences to reconcile, when, and how often to retry; nothing about Kubernetes.

A key (any hashable; the operator uses ``(namespace, name)`` of a NeuronInference) is in at most
one of three places at a time:

- *pending*: queued, waiting for a worker. Queuing it again does nothing: ten events for one
  inference before a worker gets to it make one reconcile.
- *running*: a worker is on it. Queuing it now marks it *dirty*, and it runs once more as soon
  as this run ends, so an event that arrived mid-run is never lost and a key never runs twice at
  once.
- *soon*: queued after a short delay (``enqueue_soon``), so a burst of events (a scale-up makes
  several per pod as the pods start) becomes one run.

Each worker takes a key and awaits ``work(key)``. What it returns or raises decides what follows:

- a number: run again after that many seconds (``None``: not until something queues it);
- :class:`Retry` with a delay: a temporary condition the work has already reported (throttling, a
  conflict); run again after that delay;
- :class:`Retry` without a delay, or any other exception: run again after an exponential backoff
  (``backoff`` seconds, doubling per consecutive failure of that key, at most ``max_backoff``). An
  unexpected exception is logged with its traceback; a worker never dies of one.

The queue runs on one asyncio loop and all of its methods must be called from that loop's thread;
``work`` decides for itself where the work runs (the operator hands it to a thread pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("neuronplace.operator")


class Retry(Exception):
    """Run the key again after ``delay`` seconds; ``None``: after the queue's exponential backoff."""

    def __init__(self, delay: float | None, why: str) -> None:
        super().__init__(why)
        self.delay = delay


def describe(key: Hashable) -> str:
    """A key as logs show it: ``namespace/name`` for a tuple."""
    return "/".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


class WorkQueue:
    """Keys waiting for, and being handled by, ``workers`` concurrent runs of ``work``."""

    def __init__(
        self,
        work: Callable[[Hashable], Awaitable[float | None]],
        *,
        workers: int,
        backoff: float,
        max_backoff: float,
        coalesce: float,
    ) -> None:
        self.work = work
        self.workers = workers
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.coalesce = coalesce
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[Hashable] | None = None
        self.pending: set[Hashable] = set()
        self.running: set[Hashable] = set()
        self.dirty: set[Hashable] = set()
        self.soon: set[Hashable] = set()
        self.failures: dict[Hashable, int] = {}  # consecutive failures per key
        self.tasks: list[asyncio.Task] = []

    def start(self, loop: asyncio.AbstractEventLoop, name: str = "neuronplace-worker") -> None:
        """Start the workers on ``loop``. Keys queued before this are ignored (there is nowhere to put them)."""
        self.loop = loop
        self.queue = asyncio.Queue()
        self.tasks = [loop.create_task(self.worker(), name=f"{name}-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    def enqueue(self, key: Hashable) -> None:
        if self.loop is None or self.queue is None:
            return
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait(key)

    def enqueue_soon(self, key: Hashable) -> None:
        """Enqueue after ``coalesce`` seconds; a key already pending or due soon is left as it is."""
        if self.loop is None or key in self.soon or key in self.pending:
            return
        self.soon.add(key)

        def fire() -> None:
            self.soon.discard(key)
            self.enqueue(key)

        self.loop.call_later(self.coalesce, fire)

    def enqueue_later(self, key: Hashable, delay: float) -> None:
        if self.loop is not None:
            self.loop.call_later(delay, self.enqueue, key)

    def backoff_for(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures of one key."""
        # The exponent is bounded: 2.0 ** 1024 overflows, and a key may fail for days (RBAC, quota).
        return min(self.backoff * 2.0 ** min(failures - 1, 64), self.max_backoff)

    async def worker(self) -> None:
        assert self.queue is not None
        while True:
            key = await self.queue.get()
            self.pending.discard(key)
            self.running.add(key)
            delay: float | None = None
            try:
                delay = await self.work(key)
                self.failures.pop(key, None)
            except Retry as retry:
                if retry.delay is not None:
                    delay = retry.delay
                    log.info("%s: retrying in %.1fs: %s", describe(key), delay, retry)
                else:
                    delay = self._failed(key)
                    log.warning(
                        "%s: reconcile failed (attempt %d), retrying in %.1fs: %s",
                        describe(key),
                        self.failures[key],
                        delay,
                        retry,
                    )
            except Exception as exc:  # a bug or an unexpected answer: never kill the worker
                delay = self._failed(key)
                log.exception(
                    "%s: reconcile failed (attempt %d), retrying in %.1fs: %s",
                    describe(key),
                    self.failures[key],
                    delay,
                    exc,
                )
            finally:
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.enqueue(key)
            elif delay is not None:
                self.enqueue_later(key, delay)

    def _failed(self, key: Hashable) -> float:
        count = self.failures[key] = self.failures.get(key, 0) + 1
        return self.backoff_for(count)
