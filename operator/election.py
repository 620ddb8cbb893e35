"""The rules of leader election on a ``coordination.k8s.io/v1`` Lease, with no I/O and no clock.

The I/O (reading and writing the Lease, the renew thread, the write fence) is :mod:`.leader`; the
decisions are here, so that they can be tested with any clock:

- :func:`decide`: given the Lease as just read, this candidate's identity, what it saw before and
  its monotonic "now", whether to create the Lease, take it, renew it, or wait. Expiry is judged
  the way client-go judges it: by when *this* process last saw the record change, on its own
  monotonic clock, never by the timestamps in the record, so that clock skew between machines
  cannot make a Lease look expired early.
- :func:`may_write`: whether a leader may still write: its last successful renew (timed from
  *before* the request was sent) is younger than the renew deadline. The lease is longer than the
  renew deadline, so a leader stops writing before any other candidate can see the Lease expire.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATE = "create"  # no Lease yet: create it, holding it
TAKE = "take"  # free (released) or expired: take it over
RENEW = "renew"  # ours (also when a restart under the same identity finds it): renew at once
WAIT = "wait"  # another candidate holds it and it has not expired


@dataclass(frozen=True)
class Timings:
    """controller-runtime's defaults: a lease of 15 s, a renew deadline of 10 s, a retry every 2 s."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration} > {self.renew_deadline} > {self.retry_period}"
            )


@dataclass(frozen=True)
class Record:
    """What a Lease's spec says (``holder`` empty: nobody holds it)."""

    holder: str
    duration: float  # leaseDurationSeconds, as the holder wrote it
    renew_time: str  # compared for change only, never with a clock
    transitions: int


@dataclass(frozen=True)
class Seen:
    """The record a candidate saw last and when it first saw it so (its own monotonic seconds)."""

    record: Record
    at: float


def decide(record: Record | None, me: str, seen: Seen | None, now: float) -> tuple[str, Seen | None]:
    """What candidate ``me`` does with the Lease it just read (None: there is none), and what it
    remembers having seen. A record that differs from the one seen before was renewed: it is
    alive for its full duration from ``now``."""
    if record is None:
        return CREATE, None
    if seen is None or seen.record != record:
        seen = Seen(record, now)
    if record.holder == me:
        return RENEW, seen
    if not record.holder or now - seen.at >= record.duration:
        return TAKE, seen
    return WAIT, seen


def may_write(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """Whether a leader whose last successful renew began at ``renewed_at`` (None: never) may
    still write at ``now``."""
    return renewed_at is not None and now - renewed_at < renew_deadline
