"""The operator's work queue with plain asyncio and a scripted ``work``: coalescing, the re-run of a
key queued while it runs, the retry delays, and workers that survive any failure."""

import asyncio

import pytest

from neuronplace.operator.workqueue import Retry, WorkQueue

BACKOFF, MAX_BACKOFF = 0.5, 4.0


class Recorder:
    """A ``work`` that records its calls and answers from a script (a value, or an exception to raise)."""

    def __init__(self, answers=None, hold: asyncio.Event | None = None) -> None:
        self.calls: list = []
        self.answers = dict(answers or {})
        self.hold = hold
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, key):
        self.calls.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            answer = self.answers.get(key)
            if isinstance(answer, list):
                answer = answer.pop(0) if answer else None
            if isinstance(answer, BaseException):
                raise answer
            return answer
        finally:
            self.running -= 1


def make(work, workers=1, coalesce=0.01) -> tuple[WorkQueue, list]:
    """A queue whose delayed re-runs are recorded (key, delay) instead of scheduled."""
    queue = WorkQueue(work, workers=workers, backoff=BACKOFF, max_backoff=MAX_BACKOFF, coalesce=coalesce)
    later: list = []
    queue.enqueue_later = lambda key, delay: later.append((key, delay))
    return queue, later


async def settle(queue: WorkQueue, seconds: float = 0.05) -> None:
    """Let the workers drain what is queued."""
    await asyncio.sleep(seconds)
    for _ in range(100):
        if not queue.pending and not queue.running and not queue.soon:
            return
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_key_queued_many_times_before_a_worker_takes_it_runs_once():
    async def scenario():
        work = Recorder()
        queue, _ = make(work)
        queue.start(asyncio.get_running_loop())
        for _ in range(10):
            queue.enqueue("a")
        queue.enqueue("b")
        await settle(queue)
        await queue.stop()
        return work.calls

    assert run(scenario()) == ["a", "b"]


def test_a_burst_queued_soon_becomes_one_run_after_the_coalescing_delay():
    async def scenario():
        work = Recorder()
        queue, _ = make(work, coalesce=0.05)
        queue.start(asyncio.get_running_loop())
        for _ in range(5):
            queue.enqueue_soon("a")
        await asyncio.sleep(0.01)
        before = list(work.calls)
        await settle(queue, 0.1)
        await queue.stop()
        return before, work.calls

    before, after = run(scenario())
    assert before == []
    assert after == ["a"]


def test_a_key_queued_while_it_runs_runs_once_more_afterwards_never_twice_at_once():
    async def scenario():
        hold = asyncio.Event()
        work = Recorder(hold=hold)
        queue, later = make(work, workers=3)
        queue.start(asyncio.get_running_loop())
        queue.enqueue("a")
        await asyncio.sleep(0.02)
        assert queue.running == {"a"}
        for _ in range(3):  # three events while it runs: one more run, not three
            queue.enqueue("a")
        assert queue.dirty == {"a"} and not queue.pending
        hold.set()
        await settle(queue)
        await queue.stop()
        return work, later

    work, later = run(scenario())
    assert work.calls == ["a", "a"]
    assert work.most_at_once == 1
    assert later == []


def test_a_returned_delay_requeues_the_key_after_it():
    async def scenario():
        work = Recorder({"a": 7.5, "b": None})
        queue, later = make(work)
        queue.start(asyncio.get_running_loop())
        queue.enqueue("a")
        queue.enqueue("b")
        await settle(queue)
        await queue.stop()
        return later

    assert run(scenario()) == [("a", 7.5)]


def test_retry_with_a_delay_uses_it_and_does_not_count_as_a_failure():
    async def scenario():
        work = Recorder({"a": Retry(2.5, "throttled")})
        queue, later = make(work)
        queue.start(asyncio.get_running_loop())
        queue.enqueue("a")
        await settle(queue)
        await queue.stop()
        return queue, later

    queue, later = run(scenario())
    assert later == [("a", 2.5)]
    assert queue.failures == {}


def test_failures_back_off_exponentially_up_to_the_cap_and_success_resets_them():
    async def scenario():
        errors = [
            RuntimeError("bug"),
            Retry(None, "HTTP 503"),
            RuntimeError("bug"),
            RuntimeError("bug"),
            RuntimeError("bug"),
            None,
            RuntimeError("bug"),
        ]
        work = Recorder({("ns", "a"): errors})
        queue, later = make(work)
        queue.start(asyncio.get_running_loop())
        for _ in range(len(errors)):
            queue.enqueue(("ns", "a"))
            await settle(queue)
        await queue.stop()
        return [delay for _, delay in later]

    # 0.5, 1, 2, 4, then capped at 4; the success resets the count, so the next failure waits 0.5 again.
    assert run(scenario()) == [0.5, 1.0, 2.0, 4.0, 4.0, 0.5]


def test_a_failing_work_never_kills_a_worker():
    async def scenario():
        work = Recorder({"bad": [RuntimeError("bug"), KeyError("bug"), ValueError("bug")]})
        queue, later = make(work, workers=1)
        queue.start(asyncio.get_running_loop())
        for key in ("bad", "good", "bad", "good", "bad", "good"):
            queue.enqueue(key)
            await settle(queue)
        alive = [not task.done() for task in queue.tasks]
        await queue.stop()
        return work.calls, alive, later

    calls, alive, later = run(scenario())
    assert calls == ["bad", "good"] * 3
    assert alive == [True]
    assert [key for key, _ in later] == ["bad"] * 3


def test_nothing_is_queued_before_start_and_stop_ends_the_workers():
    async def scenario():
        work = Recorder()
        queue, _ = make(work, workers=2)
        queue.enqueue("early")
        queue.enqueue_soon("early")
        queue.start(asyncio.get_running_loop())
        await settle(queue)
        tasks = list(queue.tasks)
        await queue.stop()
        return work.calls, tasks

    calls, tasks = run(scenario())
    assert calls == []
    assert len(tasks) == 2 and all(task.cancelled() for task in tasks)


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0), (5000, 4.0)])
def test_backoff_doubles_to_the_cap_and_never_overflows(failures, expected):
    queue = WorkQueue(Recorder(), workers=1, backoff=BACKOFF, max_backoff=MAX_BACKOFF, coalesce=0.1)
    assert queue.backoff_for(failures) == expected
