"""Quantities, pod requests and node allocatable as kube-scheduler counts them; the usage per node."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronplace.placement.pods import build_pod
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.resources import (
    CPU,
    EPHEMERAL_STORAGE,
    MEMORY,
    PODS,
    amount,
    check_items,
    counted,
    format_amount,
    node_allocatable,
    parse_quantity,
    pod_requests,
    replica_requests,
    shortfall,
)
from neuronplace.placement.usage import Usage
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference

# The caller's clock: placement reads none, it is given the time.
NOW_NS = 1_795_860_000_000_000_000

GI = 2**30
NEURONCORE = "aws.amazon.com/neuroncore"

# ---- quantities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "text", "expected"),
    [
        (CPU, "150", 150_000),
        (CPU, "100m", 100),
        (CPU, "0.5", 500),
        (CPU, "1.0001", 1001),  # MilliValue rounds up
        (CPU, "2e3", 2_000_000),
        (CPU, 3, 3000),
        (MEMORY, "1.5Gi", 3 * GI // 2),
        (MEMORY, "768Gi", 768 * GI),
        (MEMORY, "1k", 1000),
        (MEMORY, "1M", 10**6),
        (MEMORY, "1E", 10**18),  # exa, not an exponent
        (MEMORY, "1Ei", 2**60),
        (MEMORY, "100m", 1),  # a tenth of a byte rounds up to one
        (MEMORY, "1e-3", 1),
        (MEMORY, ".5Ki", 512),
        (MEMORY, "+5", 5),
        (NEURONCORE, "24", 24),
    ],
)
def test_quantities_become_exact_integers(resource, text, expected):
    assert amount(resource, text) == expected


@pytest.mark.parametrize(
    "text", ["", "1.5.5", "10 Gi", "Gi", "1gi", "1KiB", "one", "1e", "--1", "1e1234", None, 1.5, True]
)
def test_malformed_quantities_are_refused(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


@given(st.integers(0, 10**6), st.sampled_from(sorted(SUFFIXES)))
def test_parsing_whole_numbers_with_a_suffix_is_exact(number, suffix):
    assert parse_quantity(f"{number}{suffix}") == number * SUFFIXES[suffix]


@given(st.integers(0, 10**9), st.integers(0, 9), st.integers(-5, 5))
def test_decimals_and_exponents_are_exact(whole, tenth, exponent):
    assert parse_quantity(f"{whole}.{tenth}e{exponent}") == (whole + Fraction(tenth, 10)) * Fraction(10) ** exponent


@given(st.sampled_from([CPU, MEMORY, EPHEMERAL_STORAGE, "hugepages-2Mi", NEURONCORE]), st.integers(0, 2**62))
def test_formatted_amounts_parse_back_to_themselves(resource, value):
    assert amount(resource, format_amount(resource, value)) == value


def test_amounts_are_formatted_as_people_write_them():
    assert format_amount(CPU, 150_000) == "150"
    assert format_amount(CPU, 41_450) == "41450m"
    assert format_amount(MEMORY, 768 * GI) == "768Gi"
    assert format_amount(MEMORY, 1000) == "1000"


def test_the_scheduler_checks_these_resources_and_no_others():
    for name in (CPU, MEMORY, EPHEMERAL_STORAGE, "hugepages-1Gi", NEURONCORE, "nvidia.com/gpu", "example.com/x"):
        assert counted(name)
    for name in ("storage", PODS, "unknown"):
        assert not counted(name)


# ---- a pod's requests --------------------------------------------------------------------------


def container(name="c", requests=None, limits=None, **extra):
    return {"name": name, "resources": {"requests": requests or {}, "limits": limits or {}}, **extra}


def test_app_containers_add_up_and_limits_stand_for_missing_requests():
    spec = {
        "containers": [
            container("a", requests={CPU: "1"}, limits={CPU: "4", MEMORY: "2Gi"}),
            container("b", limits={"nvidia.com/gpu": "1"}),
        ]
    }
    assert pod_requests(spec) == {CPU: 1000, MEMORY: 2 * GI, "nvidia.com/gpu": 1}


def test_an_init_container_counts_when_it_needs_more_than_the_app_containers():
    spec = {
        "containers": [container(requests={CPU: "1", MEMORY: "1Gi"})],
        "initContainers": [container("i", requests={CPU: "3"}), container("j", requests={MEMORY: "512Mi"})],
    }
    assert pod_requests(spec) == {CPU: 3000, MEMORY: GI}


def test_sidecars_run_beside_the_app_and_beside_later_init_containers():
    spec = {
        "containers": [container(requests={CPU: "2", MEMORY: "1Gi"})],
        "initContainers": [
            container("before", requests={CPU: "2500m"}),  # no sidecar runs yet: 2.5 cpu
            container("proxy", requests={CPU: "1", MEMORY: "1Gi"}, restartPolicy="Always"),
            container("after", requests={MEMORY: "3Gi"}),  # beside the proxy: 4Gi
        ],
    }
    # app + sidecar = 3 cpu, 2Gi; the init peaks are 2.5 cpu and 4Gi.
    assert pod_requests(spec) == {CPU: 3000, MEMORY: 4 * GI}


def test_overhead_is_added_and_pod_level_requests_replace_cpu_and_memory():
    spec = {
        "containers": [container(requests={CPU: "1", MEMORY: "1Gi", NEURONCORE: "2"})],
        "resources": {"requests": {CPU: "4"}, "limits": {MEMORY: "8Gi"}},
        "overhead": {CPU: "250m", MEMORY: "120Mi"},
    }
    # Pod-level cpu wins; the pod-level memory limit does not replace what the containers request.
    assert pod_requests(spec) == {CPU: 4250, MEMORY: GI + 120 * 2**20, NEURONCORE: 2}
    spec["containers"] = [container(requests={NEURONCORE: "2"})]
    assert pod_requests(spec)[MEMORY] == 8 * GI + 120 * 2**20  # ...but stands for a missing request


def test_zero_and_unparsable_requests_count_as_nothing():
    spec = {"containers": [container(requests={CPU: "0", MEMORY: "lots", "storage": "1Gi"})]}
    assert pod_requests(spec) == {}


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_replica_requests_are_those_of_the_pod_that_is_built(processes):
    template_spec = {
        "containers": [
            container("model", requests={CPU: "8", NEURONCORE: "7"}, limits={MEMORY: "16Gi"}),
            container("metrics", requests={CPU: "100m", "aws.amazon.com/neuron": "1"}),
        ],
        "initContainers": [container("fetch", requests={EPHEMERAL_STORAGE: "50Gi", NEURONCORE: "1"})],
        "overhead": {CPU: "100m"},
    }
    cores = CoreRange(0, 4)
    placement = ReplicaPlacement(0, "n1", cores, tuple(cores.split(processes)), ("0",) * processes, (0, 1))
    resource = inference(
        "web", namespace="ns", uid="u1", replicas=None, cores=4, processes=processes, template_spec=template_spec
    )
    pod = build_pod(resource, placement, now_ns=NOW_NS)
    expected = replica_requests(template_spec, 4, processes)
    assert expected == pod_requests(pod["spec"])
    assert expected[CPU] == 8000 * processes + 200 and expected[NEURONCORE] == 4


# ---- nodes and fit -----------------------------------------------------------------------------


def test_node_allocatable_keeps_counted_resources_and_pods():
    node = {"status": {"allocatable": {CPU: "191450m", MEMORY: "700Gi", PODS: "110", NEURONCORE: "24", "x": "1"}}}
    assert node_allocatable(node) == {CPU: 191_450, MEMORY: 700 * GI, PODS: 110, NEURONCORE: 24}
    assert node_allocatable({}) == {PODS: 0}


def test_a_pod_slot_is_always_checked_and_zero_requests_never():
    assert check_items({}) == ((PODS, 1),)
    items = check_items({"b.io/x": 1, MEMORY: 5, CPU: 0, "a.io/y": 2, NEURONCORE: 4})
    assert items == ((PODS, 1), (MEMORY, 5), ("a.io/y", 2), ("b.io/x", 1))  # cores are the ledger's
    full = {PODS: 110, CPU: 192_000}
    assert shortfall(check_items({}), full, {PODS: 110}).resource == PODS
    assert shortfall(check_items({CPU: 0}), {PODS: 1}, {CPU: 10**9}) is None


def test_the_first_missing_resource_is_reported_with_its_numbers():
    items = check_items({CPU: 150_000, MEMORY: GI})
    lack = shortfall(items, {PODS: 110, CPU: 192_000, MEMORY: GI}, {PODS: 1, CPU: 150_000, MEMORY: GI})
    assert (lack.resource, lack.requested, lack.used, lack.allocatable) == (CPU, 150_000, 150_000, 192_000)
    assert lack.describe("n1") == "n1: insufficient cpu (requested 150, 42 of 192 free)"
    assert shortfall(items, {PODS: 110, CPU: 300_000, MEMORY: 2 * GI}, {CPU: 150_000, MEMORY: GI}) is None


# ---- usage ---------------------------------------------------------------------------------------


def pod(name, node="n1", cpu="1", phase="Running", pinned=False, **spec):
    spec = {"containers": [container(requests={CPU: cpu})], **spec}
    if pinned:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    else:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": {"phase": phase}}


def test_usage_counts_bound_and_pinned_live_pods_and_forgets_finished_ones():
    usage = Usage.from_pods([pod("a"), pod("b", pinned=True), pod("c", phase="Succeeded"), pod("d", node="n2")])
    assert usage.used("n1") == {CPU: 2000, PODS: 2}
    usage.observe(pod("a", phase="Failed"))
    assert usage.used("n1") == {CPU: 1000, PODS: 1}
    usage.observe(pod("b", cpu="3", pinned=True))  # an update replaces, never adds
    assert usage.used("n1") == {CPU: 3000, PODS: 1}
    usage.forget("ns/b")
    assert usage.used("n1") == {} and usage.nodes() == ["n2"]


def test_a_reservation_is_replaced_by_its_pod_and_can_be_given_back():
    usage = Usage()
    usage.reserve("n1", "ns/a", {CPU: 5000})
    assert usage.used("n1") == {CPU: 5000, PODS: 1} and usage.held_by("ns/a") == ("n1", {CPU: 5000, PODS: 1})
    usage.observe(pod("a", cpu="5"))
    assert usage.used("n1") == {CPU: 5000, PODS: 1}
    usage.forget("ns/a")
    usage.forget("ns/a")  # idempotent
    assert usage.used("n1") == {}


def test_the_operator_cache_feeds_every_pod_event_to_the_usage():
    from neuronplace.operator.cache import Cache
    from neuronplace.operator.keys import DELETED

    cache = Cache()
    cache.apply_pod("ADDED", pod("a", cpu="2"))
    cache.apply_pod("ADDED", pod("b", cpu="3", pinned=True))  # pinned, not yet bound: counts there
    assert cache.usage.used("n1") == {CPU: 5000, PODS: 2}
    cache.apply_pod("MODIFIED", pod("a", cpu="2", phase="Failed"))
    cache.apply_pod(DELETED, pod("b"))
    assert cache.usage.used("n1") == {}
