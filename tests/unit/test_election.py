"""The pure rules of leader election (``neuronplace.operator.election``), with an injected clock:
who may create, take, renew or must wait, and the write fence; then a simulation of candidates
with arbitrary freezes and lost requests, in which two leaders never may write at once."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from neuronplace.operator import election as el

T = el.Timings()


def record(holder: str, renew: str = "r1", duration: float = T.lease_duration, transitions: int = 0) -> el.Record:
    return el.Record(holder, duration, renew, transitions)


def test_an_absent_lease_is_created_at_once():
    assert el.decide(None, "a", None, 0.0) == (el.CREATE, None)


def test_a_released_lease_is_taken_at_once():
    action, _ = el.decide(record(""), "b", None, 0.0)
    assert action == el.TAKE


def test_a_restarted_candidate_takes_its_own_lease_back_at_once():
    action, seen = el.decide(record("a"), "a", None, 100.0)
    assert action == el.RENEW and seen == el.Seen(record("a"), 100.0)


def test_another_holders_lease_expires_a_duration_after_it_was_last_seen_changing():
    action, seen = el.decide(record("a"), "b", None, 100.0)
    assert action == el.WAIT
    action, seen = el.decide(record("a"), "b", seen, 100.0 + T.lease_duration - 0.01)
    assert action == el.WAIT
    # Renewed meanwhile: alive for a full duration from when that was seen.
    action, seen = el.decide(record("a", renew="r2"), "b", seen, 110.0)
    assert action == el.WAIT and seen.at == 110.0
    assert el.decide(record("a", renew="r2"), "b", seen, 110.0 + T.lease_duration - 0.01)[0] == el.WAIT
    assert el.decide(record("a", renew="r2"), "b", seen, 110.0 + T.lease_duration)[0] == el.TAKE


def test_expiry_follows_the_duration_the_holder_wrote():
    _, seen = el.decide(record("a", duration=40), "b", None, 0.0)
    assert el.decide(record("a", duration=40), "b", seen, 39.0)[0] == el.WAIT
    assert el.decide(record("a", duration=40), "b", seen, 40.0)[0] == el.TAKE


def test_the_fence_closes_at_the_renew_deadline():
    assert not el.may_write(None, 0.0, T.renew_deadline)
    assert el.may_write(5.0, 5.0 + T.renew_deadline - 0.001, T.renew_deadline)
    assert not el.may_write(5.0, 5.0 + T.renew_deadline, T.renew_deadline)


@pytest.mark.parametrize("timings", [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)])
def test_timings_that_could_overlap_two_leaders_are_refused(timings):
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        el.Timings(*timings)


class Simulated:
    """A Lease store with resourceVersions and candidates with monotonic clocks that may be frozen."""

    def __init__(self) -> None:
        self.lease: el.Record | None = None
        self.version = 0
        self.seen: dict[str, el.Seen | None] = {}
        self.renewed: dict[str, float | None] = {}

    def attempt(self, me: str, now: float) -> None:
        """One attempt, read and write at ``now`` (a write with a stale version is refused)."""
        read, version = self.lease, self.version
        if self.renewed.get(me) is not None and not el.may_write(self.renewed[me], now, T.renew_deadline):
            self.renewed[me] = None  # the process exits: a restart is a fresh follower
            self.seen[me] = None
            return
        action, self.seen[me] = el.decide(read, me, self.seen.get(me), now)
        if action == el.WAIT or version != self.version:
            return
        self.version += 1
        transitions = 0 if read is None else read.transitions + (read.holder != me)
        self.lease = el.Record(me, T.lease_duration, f"v{self.version}", transitions)
        self.renewed[me] = now

    def writers(self, now: float) -> set[str]:
        return {me for me, at in self.renewed.items() if el.may_write(at, now, T.renew_deadline)}


# Gaps around the timings' edges, and anything in between.
GAPS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 9.5, 10.0, 14.9, 15.0, 20.0]), st.floats(0, 20))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), GAPS), min_size=1, max_size=60))
@example([("a", 0.0), ("b", 0.0), ("b", 9.5)])  # b takes over just before a's fence closes
def test_two_candidates_never_may_write_at_once(steps):
    """Candidates attempt at arbitrary moments (a gap of up to 20 s is a freeze, a lost request or
    a slow one); at no moment do two of them pass the fence."""
    sim = Simulated()
    now = 0.0
    for me, gap in steps:
        now += gap
        sim.attempt(me, now)
        for probe in (now, now + T.renew_deadline / 2, now + T.renew_deadline - 0.001):
            assert len(sim.writers(probe)) <= 1, (sim.renewed, probe)
