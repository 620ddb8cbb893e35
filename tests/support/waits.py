"""Waiting in cluster tests for what must NOT happen: no event says "it never will", so the test
looks for a while, a while derived from the operator timing that would make it happen."""

from __future__ import annotations

import time
from collections.abc import Callable


def hold(check: Callable[[], object], seconds: float, interval: float = 0.5) -> None:
    """Call ``check()`` (it asserts) every ``interval`` for ``seconds``, and once more at the end.

    The caller derives ``seconds`` from the operator timing that would make the unwanted thing
    happen (``TEST_TIMINGS``: a resync, a backoff, a grace period) and says why in a comment.
    """
    deadline = time.monotonic() + seconds
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))  # between two looks at the state: only time is awaited here
