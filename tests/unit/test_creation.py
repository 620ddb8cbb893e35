"""What the API server's answers to a ruling's creates mean (``placement.creation.judge``), pure."""

from neuronplace.placement.creation import Answer, judge
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.ruling import Creation, Ruling
from neuronplace.placement.status import Problem
from neuronplace.runtime.coreset import CoreRange

CONFLICT, FORBIDDEN = 0.2, 30.0


def ruling(replicas=(0, 1), unplaceable=()):
    creations = tuple(
        Creation(
            ReplicaPlacement(r, "n1", CoreRange(2 * r, 2), (CoreRange(2 * r, 2),), ("0-1",), (r,)),
            {"metadata": {"name": f"bert-{r}"}},
        )
        for r in replicas
    )
    problem = Problem("Unschedulable", "replica 2: no room") if unplaceable else None
    return Ruling(binding="Scheduler", creations=creations, unplaceable=tuple(unplaceable), problem=problem)


def verdict(answers, **kwargs):
    return judge("bert", ruling(**kwargs), answers, conflict_retry=CONFLICT, forbidden_retry=FORBIDDEN)


def test_all_created_is_one_placed_event_and_nothing_to_remember():
    out = verdict([Answer(0), Answer(1)])
    assert out.problem is None and out.all_placed and out.release == () and out.raise_answer is None
    assert [(e.reason, e.type_) for e in out.events] == [("Placed", "Normal")]
    assert "replica 0 → bert-0 on n1 cores 0-1; replica 1 → bert-1 on n1 cores 2-3" == out.events[0].message


def test_a_409_keeps_its_reservation_and_looks_again_shortly():
    out = verdict([Answer(0), Answer(1, True, 409, "exists")])
    assert out.release == () and out.retry == CONFLICT and out.problem is None and out.raise_answer is None


def test_a_refused_pod_is_this_generations_problem_and_gives_its_reservation_back():
    out = verdict([Answer(0, True, 422, "bad env", permanent=True), Answer(1)])
    assert out.release == (0,) and out.generation_problem
    assert out.problem == Problem("PodRejected", "the API server refused pod bert-0: bad env")
    assert ("PodRejected", "Warning", False) in [(e.reason, e.type_, e.once) for e in out.events]


def test_forbidden_is_reported_once_and_retried_slowly():
    out = verdict([Answer(0, True, 403, "exceeded quota"), Answer(1, True, 403, "exceeded quota")])
    assert out.release == (0, 1) and out.retry == FORBIDDEN and not out.generation_problem
    assert out.problem == Problem("PodRejected", "pod creation forbidden: exceeded quota")
    assert [(e.reason, e.once) for e in out.events] == [("PodForbidden", True)]


def test_throttling_and_other_temporary_failures_go_to_the_work_queue():
    throttled = verdict([Answer(0, True, 500, "boom"), Answer(1, True, 429, "slow down")])
    assert throttled.raise_answer == 1 and throttled.release == (0, 1)  # 429 first, whatever the order
    broken = verdict([Answer(0), Answer(1, True, None, "connection reset")])
    # No HTTP answer: the pod may exist (a create that timed out but succeeded), so its cores stay held.
    assert broken.raise_answer == 1 and broken.release == ()
    assert [e.reason for e in broken.events] == ["Placed"]  # replica 0 was placed all the same


def test_replicas_that_fit_nowhere_are_the_problem_once_the_creates_went_well():
    out = verdict([Answer(0), Answer(1)], unplaceable=[(2, "no room")])
    assert out.problem == Problem("Unschedulable", "replica 2: no room") and not out.all_placed
    assert [(e.reason, e.once) for e in out.events] == [("Placed", False), ("Unschedulable", True)]
