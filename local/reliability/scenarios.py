"""Fault and race scenarios, written once for pytest (``tests/reliability/test_faults.py``) and ``benchmarks/chaos.py``.

Each scenario is a function of a :class:`~neuronplace.local.reliability.harness.Harness` (its own namespace, node
pool and operator on the real local control plane). It builds a small world, injects its faults
(each counted with ``h.fault``), and ends every fault with ``h.converge``: the shared invariant
checker (``invariants.py``) plus the scenario's own expectations must hold within a bound, and the
operator must be healthy. Random choices come from ``h.rng`` (seeded per scenario), so a failing
run can be repeated with the same seed.

Fleets are small on purpose: the whole suite must finish in minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client as k8s

from neuronplace.local.fleet import KWOK_TOLERATION, build_node
from neuronplace.local.reliability import bad_specs
from neuronplace.local.reliability import invariants as inv
from neuronplace.local.reliability.harness import POOL_LABEL, Harness
from neuronplace.placement.names import CORES_ANNOTATION, GROUP, INFERENCE_LABEL, PLURAL, VERSION

Expectation = Callable[[inv.Snapshot], list[inv.Violation]]


# ---- expectations a scenario adds to the shared invariants -------------------------------------


def _pods(snapshot: inv.Snapshot, namespace: str) -> dict[str, list[dict]]:
    """Live, non-terminating managed pods of ``namespace`` by NeuronInference name."""
    out: dict[str, list[dict]] = {}
    for pod in snapshot.pods:
        meta = pod["metadata"]
        if meta["namespace"] == namespace and inv.is_managed(pod) and inv.is_live(pod) and not inv.is_terminating(pod):
            out.setdefault(meta["labels"][INFERENCE_LABEL], []).append(pod)
    return out


def replicas_ready(h: Harness, counts: Mapping[str, int]) -> Expectation:
    """Each named resource has exactly ``n`` pods and all are Ready."""

    def expect(snapshot: inv.Snapshot) -> list[inv.Violation]:
        pods = _pods(snapshot, h.namespace)
        out = []
        for name, n in counts.items():
            have = pods.get(name, [])
            ready = sum(1 for p in have if inv.is_ready(p))
            if len(have) != n or ready != n:
                out.append(
                    inv.Violation("expected", f"{h.namespace}/{name}", f"{len(have)} pods, {ready} Ready; want {n}")
                )
        return out

    return expect


def placed_or_unschedulable(h: Harness, counts: Mapping[str, int]) -> Expectation:
    """Each named resource has its ``n`` pods Ready, or fewer and says Unschedulable (the shared
    ``fits-are-placed`` invariant then proves that no missing replica fits)."""

    def expect(snapshot: inv.Snapshot) -> list[inv.Violation]:
        pods = _pods(snapshot, h.namespace)
        by_name = {i["metadata"]["name"]: i for i in snapshot.inferences if i["metadata"]["namespace"] == h.namespace}
        out = []
        for name, n in counts.items():
            have = pods.get(name, [])
            if len(have) == n and all(inv.is_ready(p) for p in have):
                continue
            placed = inv.condition(by_name.get(name, {}), "Placed")
            if len(have) < n and placed.get("reason") == inv.UNSCHEDULABLE:
                continue
            out.append(
                inv.Violation(
                    "expected",
                    f"{h.namespace}/{name}",
                    f"{len(have)} pods for {n} replicas, Placed={placed.get('reason')}",
                )
            )
        return out

    return expect


def nothing_on(h: Harness, node: str, except_uids: frozenset[str] = frozenset()) -> Expectation:
    def expect(snapshot: inv.Snapshot) -> list[inv.Violation]:
        return [
            inv.Violation("expected", f"{p['metadata']['namespace']}/{p['metadata']['name']}", f"still on {node}")
            for pods in _pods(snapshot, h.namespace).values()
            for p in pods
            if p["spec"].get("nodeName") == node and p["metadata"]["uid"] not in except_uids
        ]

    return expect


def all_of(*expectations: Expectation) -> Expectation:
    """Every expectation's violations together."""
    return lambda snapshot: [v for e in expectations for v in e(snapshot)]


def check_now(h: Harness) -> None:
    """The invariants that must hold at EVERY instant, not only after convergence: no core held
    twice, and every live pod consistent. Counted as one check."""
    h.record.checks += 1
    snapshot = h.snapshot()
    found = inv.check_exclusive_cores(snapshot) + inv.check_pod_consistency(snapshot)
    if found:
        h.record.violations += [f"{h.scenario}: {v}" for v in found]
        raise inv.NotConverged("mid-fault violations:\n" + "\n".join(map(str, found)))


def _custom(h: Harness) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(h.api)


def scale_all(h: Harness, counts: Mapping[str, int]) -> None:
    """Patch spec.replicas of several resources at once (concurrent API calls, like an autoscaler)."""
    api = _custom(h)

    def patch(item):
        name, n = item
        api.patch_namespaced_custom_object(GROUP, VERSION, h.namespace, PLURAL, name, {"spec": {"replicas": n}})

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(patch, counts.items()))


def node_of(snapshot: inv.Snapshot, h: Harness, pod_name: str) -> str:
    for pod in snapshot.pods:
        if pod["metadata"]["namespace"] == h.namespace and pod["metadata"]["name"] == pod_name:
            return pod["spec"]["nodeName"]
    raise AssertionError(f"no pod {pod_name} in {h.namespace}")


def placements(snapshot: inv.Snapshot, h: Harness) -> dict[str, tuple[str, str]]:
    return {
        p["metadata"]["name"]: (p["spec"]["nodeName"], p["metadata"]["annotations"][CORES_ANNOTATION])
        for pods in _pods(snapshot, h.namespace).values()
        for p in pods
    }


# ---- the scenarios ---------------------------------------------------------------------------------


def operator_sigkill_during_scale_up(h: Harness, kills: int = 10) -> None:
    """SIGKILL the operator at a random moment of a scale-up of four resources, ``kills`` times in a
    row, starting it again each time: nothing duplicated, nothing lost, no core handed out twice."""
    h.fleet({"inf2.48xlarge": 2})  # 48 cores
    shapes = {"alpha": (2, 1), "beta": (4, 2), "gamma": (1, 1), "delta": (2, 2)}  # cores, processes
    h.apply(*[h.inference(name, replicas=1, cores=c, processes=p) for name, (c, p) in shapes.items()])
    current = {name: 1 for name in shapes}
    h.converge(extra=replicas_ready(h, current))
    for _ in range(kills):
        # The two smallest grow by 2-4 (so every round scales several resources up); the others
        # move anywhere in 0-3. Up to 6 x 9 = 54 cores of 48: some rounds leave replicas honestly
        # Unschedulable, and scale-downs free cores that the growers then need.
        names = sorted(shapes, key=lambda name: (current[name], h.rng.random()))
        growers = names[:2]
        current = {
            name: min(current[name] + h.rng.randint(2, 4), 6) if name in growers else h.rng.randint(0, 3)
            for name in shapes
        }
        scale_all(h, current)
        time.sleep(h.rng.uniform(0.0, 1.0))  # the fault strikes at a random moment of the scale-up, on purpose
        since = h.fault("operator SIGKILL during scale-up")
        h.operator.kill(signal.SIGKILL)
        check_now(h)
        h.operator.start()
        h.converge("operator SIGKILL during scale-up", since=since, extra=placed_or_unschedulable(h, current))


def rollout_with_operator_kills(h: Harness, kills: int = 3) -> None:
    """Change the pod template, and SIGKILL the operator in the middle of the rolling update, three
    times: the rollout finishes with every replica on the new template, none lost or doubled."""
    h.fleet({"inf2.48xlarge": 1})
    resource = h.inference("roll", replicas=4, cores=4, processes=2)
    h.apply(resource)
    h.converge(extra=replicas_ready(h, {"roll": 4}))
    for version in range(1, kills + 1):
        resource["spec"]["template"]["spec"]["containers"][0]["env"] = [
            {"name": "MODEL_VERSION", "value": str(version)}
        ]
        h.apply(resource)
        time.sleep(h.rng.uniform(0.2, 1.5))  # the fault strikes at a random moment of the rollout, on purpose
        since = h.fault("operator SIGKILL during rollout")
        h.operator.kill(signal.SIGKILL)
        check_now(h)
        h.operator.start()

        def rolled(snapshot: inv.Snapshot, version=version) -> list[inv.Violation]:
            out = []
            for pod in _pods(snapshot, h.namespace).get("roll", []):
                model = next((c for c in pod["spec"]["containers"] if c["name"].startswith("model")), {})
                env = {e["name"]: e.get("value") for e in model.get("env") or []}
                if env.get("MODEL_VERSION") != str(version):
                    out.append(
                        inv.Violation(
                            "expected",
                            pod["metadata"]["name"],
                            f"runs template version {env.get('MODEL_VERSION')}, want {version}",
                        )
                    )
            return out

        h.converge(
            "operator SIGKILL during rollout",
            since=since,
            timeout=90,
            extra=all_of(replicas_ready(h, {"roll": 4}), rolled),
        )


def faults_while_operator_down(h: Harness) -> None:
    """While the operator is dead: a node with replicas is deleted, one resource is scaled to 0,
    another up, a pod is deleted. The restarted operator rebuilds its ledger from the pods and
    converges: the scaled-down cores are free again and nothing runs on the lost node."""
    h.fleet({"inf2.48xlarge": 3})
    h.apply(
        h.inference("spread", replicas=3, cores=4, strategy="Spread"),
        h.inference("big", replicas=2, cores=8),
        h.inference("small", replicas=2, cores=2),
    )
    snapshot = h.converge(extra=replicas_ready(h, {"spread": 3, "big": 2, "small": 2}))
    victim = node_of(snapshot, h, "spread-1")
    h.operator.kill(signal.SIGKILL)
    h.cluster.delete_node(victim, wait=False)
    scale_all(h, {"big": 0, "small": 6})
    h.kubectl("delete", "pod", "spread-0", "--wait=false")
    since = h.fault("faults while the operator is down")
    h.operator.start()
    h.converge(
        "faults while the operator is down",
        since=since,
        extra=all_of(replicas_ready(h, {"spread": 3, "big": 0, "small": 6}), nothing_on(h, victim)),
    )


def terminating_pod_keeps_cores(h: Harness) -> None:
    """A replica pod stuck terminating (a finalizer someone else put there) still holds its cores
    after its resource is deleted: nothing else gets them until the pod is really gone, and then
    the waiting resource does (no core held twice, and no stale usage left to clean by hand)."""
    h.fleet({"inf2.8xlarge": 1})  # 2 cores
    h.apply(h.inference("old", replicas=1, cores=2))
    h.converge(extra=replicas_ready(h, {"old": 1}))
    h.kubectl(
        "patch", "pod", "old-0", "--type=merge", "-p", json.dumps({"metadata": {"finalizers": ["example.com/hold"]}})
    )
    h.kubectl("delete", "ninf", "old", "--wait=false")
    h.apply(h.inference("new", replicas=1, cores=2))
    since = h.fault("pod stuck terminating")

    def waits(snapshot: inv.Snapshot) -> list[inv.Violation]:
        old = [
            p for p in snapshot.pods if p["metadata"]["namespace"] == h.namespace and p["metadata"]["name"] == "old-0"
        ]
        if not old or not inv.is_terminating(old[0]):
            return [inv.Violation("expected", "old-0", "should be terminating, held by its finalizer")]
        return []

    h.converge("pod stuck terminating", since=since, extra=all_of(waits, placed_or_unschedulable(h, {"new": 1})))
    h.kubectl("patch", "pod", "old-0", "--type=merge", "-p", json.dumps({"metadata": {"finalizers": None}}))
    since = h.fault("stuck pod released")
    h.converge("stuck pod released", since=since, extra=replicas_ready(h, {"new": 1}))


def failed_pods_recreated(h: Harness) -> None:
    """Pods that end (phase Failed) are replaced, on the same cores."""
    h.fleet({"inf2.48xlarge": 1})
    h.apply(h.inference("flaky", replicas=4, cores=2, processes=2))
    snapshot = h.converge(extra=replicas_ready(h, {"flaky": 4}))
    before = placements(snapshot, h)
    victims = sorted(h.rng.sample(sorted(before), 2))
    since = h.fault("pods failed")
    for pod in victims:
        h.kubectl(
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": "Failed", "reason": "Chaos", "message": "killed by chaos"}}),
        )
    check_now(h)

    def replaced(snapshot: inv.Snapshot) -> list[inv.Violation]:
        now = placements(snapshot, h)
        uids = {
            p["metadata"]["name"]: p["metadata"]["uid"]
            for p in snapshot.pods
            if p["metadata"]["namespace"] == h.namespace
        }
        return [
            inv.Violation("expected", name, f"was on {before[name]}, now on {now.get(name)}")
            for name in before
            if now.get(name) != before[name]
        ] + [
            inv.Violation("expected", name, "the failed pod was not replaced")
            for name in victims
            if uids.get(name) == failed_uids[name]
        ]

    failed_uids = {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in snapshot.pods
        if p["metadata"]["namespace"] == h.namespace and p["metadata"]["name"] in victims
    }
    h.converge("pods failed", since=since, extra=all_of(replicas_ready(h, {"flaky": 4}), replaced))


def _control_plane_restart(h: Harness, component: str) -> None:
    h.fleet({"inf2.48xlarge": 2})
    names = [f"svc-{i}" for i in range(6)]
    h.apply(*[h.inference(name, replicas=2, cores=2) for name in names])  # 24 of 48 cores
    # The restart strikes at a random moment while the operator is busy creating pods, on purpose.
    time.sleep(h.rng.uniform(0.0, 0.5))
    pid, starts = h.operator.process.pid, h.operator.starts
    h.cluster.restart_component(component, downtime=0.5)
    since = h.fault(f"{component} restart")
    check_now(h)
    # New work right after the restart reaches the operator only through its re-established watches.
    wanted = {name: 2 for name in names} | {name: 3 for name in names[:3]}
    scale_all(h, {name: 3 for name in names[:3]})
    h.converge(f"{component} restart", since=since, extra=replicas_ready(h, wanted))
    assert h.operator.alive() and h.operator.process.pid == pid and h.operator.starts == starts, (
        f"the operator was restarted or died across the {component} restart"
    )


def operator_starts_while_apiserver_frozen(h: Harness) -> None:
    """The operator (re)starts while kube-apiserver answers nothing (frozen with SIGSTOP: accepted
    connections, no replies, as in a partition or an overloaded control plane): it keeps retrying,
    then syncs and serves once the API server is back, without being restarted again.

    Freezing rather than stopping the API server keeps its port bound: on a machine where other
    local clusters start, a freed port can be taken by one of them within seconds."""
    h.fleet({"inf2.48xlarge": 1})
    h.apply(h.inference("svc", replicas=2, cores=4))
    h.converge(extra=replicas_ready(h, {"svc": 2}))
    h.scale("svc", 4)  # work the operator will only see after its restart
    h.operator.kill(signal.SIGKILL)
    apiserver = h.cluster.running_components()["kube-apiserver"]
    log_start = h.operator.log_path.stat().st_size
    os.kill(apiserver, signal.SIGSTOP)
    try:
        starter = threading.Thread(target=h.operator.start, kwargs={"timeout": 120}, daemon=True)
        starter.start()
        deadline = time.monotonic() + 60
        while "failed temporarily" not in h.operator.log_path.read_text(errors="replace")[log_start:]:
            assert time.monotonic() < deadline and starter.is_alive(), (
                "the operator never tried to reach the API server\n" + h.operator.log_tail(30)
            )
            time.sleep(0.1)  # the poll interval: what is awaited is the operator's log line
        starts = h.operator.starts
    finally:
        os.kill(apiserver, signal.SIGCONT)
    since = h.fault("operator started while kube-apiserver was frozen")
    starter.join(timeout=120)
    assert h.operator.alive() and h.operator.starts == starts, "the operator did not survive its start without an API"
    h.converge("operator started while kube-apiserver was frozen", since=since, extra=replicas_ready(h, {"svc": 4}))


def kube_apiserver_restart(h: Harness) -> None:
    """Restart kube-apiserver while the operator reconciles: it reconnects and converges by itself."""
    _control_plane_restart(h, "kube-apiserver")


def etcd_restart(h: Harness) -> None:
    """Restart etcd while the operator reconciles: it reconnects and converges by itself."""
    _control_plane_restart(h, "etcd")


def node_deleted(h: Harness) -> None:
    """Delete the node that holds the most replicas: they are re-placed on the others."""
    h.fleet({"inf2.48xlarge": 3})
    h.apply(h.inference("spread", replicas=3, cores=4, strategy="Spread"), h.inference("packed", replicas=2, cores=8))
    counts = {"spread": 3, "packed": 2}
    snapshot = h.converge(extra=replicas_ready(h, counts))
    per_node: dict[str, int] = {}
    for node, _ in placements(snapshot, h).values():
        per_node[node] = per_node.get(node, 0) + 1
    victim = max(sorted(per_node), key=per_node.get)
    since = h.fault("node deleted")
    h.cluster.delete_node(victim)
    h.converge("node deleted", since=since, extra=all_of(replicas_ready(h, counts), nothing_on(h, victim)))


def node_not_ready(h: Harness) -> None:
    """A node goes NotReady: after the operator's grace period its replicas move; when it comes
    back nothing is duplicated."""
    nodes = h.fleet({"inf2.48xlarge": 2})
    h.apply(h.inference("svc", replicas=2, cores=4, strategy="Spread"))
    snapshot = h.converge(extra=replicas_ready(h, {"svc": 2}))
    victim = node_of(snapshot, h, "svc-0")
    assert victim in nodes
    since = h.fault("node NotReady")
    h.cluster.set_node_ready(victim, False)
    h.converge("node NotReady", since=since, extra=all_of(replicas_ready(h, {"svc": 2}), nothing_on(h, victim)))
    since = h.fault("node Ready again")
    h.cluster.set_node_ready(victim, True)
    h.converge("node Ready again", since=since, extra=replicas_ready(h, {"svc": 2}))


def node_cordoned(h: Harness) -> None:
    """Cordon a node: what runs there stays, nothing new goes there."""
    nodes = h.fleet({"inf2.48xlarge": 2})
    h.apply(h.inference("web", replicas=2, cores=4, strategy="Spread"))
    snapshot = h.converge(extra=replicas_ready(h, {"web": 2}))
    cordoned = nodes[0]
    staying = frozenset(
        p["metadata"]["uid"]
        for pods in _pods(snapshot, h.namespace).values()
        for p in pods
        if p["spec"]["nodeName"] == cordoned
    )
    since = h.fault("node cordoned")
    h.cluster.kubectl("cordon", cordoned)
    h.scale("web", 6)

    def kept(snapshot: inv.Snapshot) -> list[inv.Violation]:
        uids = {p["metadata"]["uid"] for pods in _pods(snapshot, h.namespace).values() for p in pods}
        return [
            inv.Violation("expected", cordoned, "a pod that ran there before the cordon was removed")
            for uid in staying
            if uid not in uids
        ]

    h.converge(
        "node cordoned",
        since=since,
        extra=all_of(replicas_ready(h, {"web": 6}), nothing_on(h, cordoned, except_uids=staying), kept),
    )
    h.cluster.kubectl("uncordon", cordoned)


def fifty_resources_four_nodes(h: Harness) -> None:
    """50 resources created at once for 4 nodes (48 cores, far less than asked): no core twice,
    every one placed or honestly Unschedulable; when half are deleted the waiting ones get the room."""
    h.fleet({"inf2.24xlarge": 4})
    wanted = {f"m{i:02d}": (h.rng.choice([1, 1, 2]), h.rng.choice([1, 2])) for i in range(50)}  # replicas, cores
    api = _custom(h)

    def create(item):
        name, (replicas, cores) = item
        api.create_namespaced_custom_object(
            GROUP, VERSION, h.namespace, PLURAL, h.inference(name, replicas=replicas, cores=cores)
        )

    since = h.fault("50 resources at once")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, wanted.items()))
    check_now(h)  # mid-burst: the operator is still placing
    counts = {name: replicas for name, (replicas, _) in wanted.items()}
    snapshot = h.converge("50 resources at once", since=since, timeout=120, extra=placed_or_unschedulable(h, counts))
    pods = _pods(snapshot, h.namespace)
    assert sum(len(p) for p in pods.values()) >= 20, "most of the 48 cores should be in use"
    placed = sorted(name for name in wanted if pods.get(name))
    gone = h.rng.sample(placed, len(placed) // 2)
    since = h.fault("half of them deleted")
    h.kubectl("delete", "ninf", *gone, "--wait=false")
    remaining = {name: n for name, n in counts.items() if name not in gone}
    h.converge("half of them deleted", since=since, timeout=120, extra=placed_or_unschedulable(h, remaining))


def delete_recreate_loop(h: Harness, rounds: int = 6) -> None:
    """Delete a resource and create it again under the same name, over and over: the old
    incarnation's pods keep their cores until they are gone, the new one never shares them."""
    h.fleet({"inf2.48xlarge": 1})
    for _ in range(rounds):
        h.apply(h.inference("churn", replicas=3, cores=4, processes=2))
        time.sleep(h.rng.uniform(0.0, 1.0))  # the delete strikes at a random moment of the placement, on purpose
        check_now(h)
        h.kubectl("delete", "ninf", "churn", "--wait=false")
        h.fault("resource deleted and recreated")
    h.apply(h.inference("churn", replicas=3, cores=4, processes=2))
    since = time.monotonic()
    h.converge("resource deleted and recreated", since=since, extra=replicas_ready(h, {"churn": 3}))


def pod_delete_storm(h: Harness, rounds: int = 3) -> None:
    """Delete half of all pods at once, three times: each comes back, on the same cores."""
    h.fleet({"inf2.48xlarge": 2})
    counts = {name: 3 for name in ("a", "b", "c", "d")}
    h.apply(*[h.inference(name, replicas=3, cores=2, processes=h.rng.choice([1, 2])) for name in counts])
    snapshot = h.converge(extra=replicas_ready(h, counts))
    before = placements(snapshot, h)

    def same_cores(snapshot: inv.Snapshot) -> list[inv.Violation]:
        now = placements(snapshot, h)
        return [
            inv.Violation("expected", name, f"was on {before[name]}, now on {now.get(name)}")
            for name in before
            if now.get(name) != before[name]
        ]

    for _ in range(rounds):
        victims = h.rng.sample(sorted(before), len(before) // 2)
        since = h.fault("pod-delete storm")
        h.kubectl("delete", "pod", *victims, "--wait=false")
        check_now(h)
        h.converge("pod-delete storm", since=since, extra=all_of(replicas_ready(h, counts), same_cores))


def foreign_pods(h: Harness) -> None:
    """Pods we did not create hold Neuron cores on a managed node (one with the device plugin's
    AWS_NEURON_IDS, one with only a count): the operator never hands those cores out."""
    node = h.fleet({"inf2.48xlarge": 1})[0]  # 24 cores

    def foreign(name: str, ids: str | None) -> dict:
        metadata = {"name": name, "annotations": {"AWS_NEURON_IDS": ids} if ids else {}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": node,
                "tolerations": [dict(KWOK_TOLERATION)],
                "containers": [
                    {
                        "name": "c",
                        "image": "other:1",
                        "resources": {
                            "requests": {"aws.amazon.com/neuroncore": "4"},
                            "limits": {"aws.amazon.com/neuroncore": "4"},
                        },
                    }
                ],
            },
        }

    h.apply(foreign("foreign-exact", "8,9,10,11"), foreign("foreign-count", None))
    since = h.fault("foreign pods on a managed node")
    # 10 x 2 cores asked, 24 - 8 = 16 free: 8 placed, 2 honestly Unschedulable.
    h.apply(h.inference("fill", replicas=10, cores=2))

    def eight(snapshot: inv.Snapshot) -> list[inv.Violation]:
        have = len(_pods(snapshot, h.namespace).get("fill", []))
        return [] if have == 8 else [inv.Violation("expected", "fill", f"{have} pods; 8 fit beside the foreign pods")]

    h.converge(
        "foreign pods on a managed node", since=since, extra=all_of(placed_or_unschedulable(h, {"fill": 10}), eight)
    )
    since = h.fault("foreign pods gone")
    h.kubectl("delete", "pod", "foreign-exact", "foreign-count", "--wait=false")
    h.converge("foreign pods gone", since=since, extra=replicas_ready(h, {"fill": 10}))


def odd_nodes(h: Harness) -> None:
    """Nodes with odd data: unknown instance type without an override, no Neuron allocatable, zero
    allocatable, an allocatable smaller than the topology. The operator places nothing
    where it cannot, uses only what is allocatable, says why, and stays healthy."""

    def odd(kind: str, instance: str, allocatable: Mapping[str, str | None], label_type: str | None = None) -> dict:
        node = build_node(f"{h.pool}-odd-{kind}", instance, labels={POOL_LABEL: h.pool, "odd": kind})
        if label_type:
            node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = label_type
        for field in ("capacity", "allocatable"):
            for resource, value in allocatable.items():
                if value is None:
                    node["status"][field].pop(resource, None)
                else:
                    node["status"][field][resource] = value
        return node

    nodes = [
        odd("unknown", "inf2.xlarge", {}, label_type="inf9.mega"),
        odd("noalloc", "inf2.8xlarge", {"aws.amazon.com/neuroncore": None, "aws.amazon.com/neuron": None}),
        odd("zero", "inf2.8xlarge", {"aws.amazon.com/neuroncore": "0", "aws.amazon.com/neuron": "0"}),
        odd("small", "inf2.48xlarge", {"aws.amazon.com/neuroncore": "4"}),
    ]
    # A non-numeric or fractional allocatable never reaches the operator: the API server refuses
    # the node (extended resources must be whole numbers), and nothing is created.
    for value in ("lots", "1500m"):
        refused = odd(f"bad-{len(value)}", "inf2.8xlarge", {"aws.amazon.com/neuroncore": value})
        result = h.cluster.kubectl("create", "-f", "-", input=json.dumps(refused), check=False)
        assert result.returncode != 0, f"the API server accepted allocatable neuroncore={value!r}"
        assert "quantities must match" in result.stderr or "must be an integer" in result.stderr, result.stderr
    h.cluster.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    h.cluster.wait_nodes([n["metadata"]["name"] for n in nodes], ready=True)
    since = h.fault("nodes with odd data")
    says = {"on-unknown": "unknown topology", "on-noalloc": "without NeuronCores", "on-zero": "without NeuronCores"}
    resources = [h.inference(name, replicas=1, cores=1, nodeSelector={"odd": name[3:]}) for name in says]
    resources.append(h.inference("on-small", replicas=3, cores=2, nodeSelector={"odd": "small"}))
    h.apply(*resources)

    def explained(snapshot: inv.Snapshot) -> list[inv.Violation]:
        by_name = {i["metadata"]["name"]: i for i in snapshot.inferences if i["metadata"]["namespace"] == h.namespace}
        pods = _pods(snapshot, h.namespace)
        out = []
        for name, phrase in says.items():
            placed = inv.condition(by_name.get(name, {}), "Placed")
            if pods.get(name) or placed.get("reason") != inv.UNSCHEDULABLE or phrase not in placed.get("message", ""):
                out.append(
                    inv.Violation(
                        "expected",
                        name,
                        f"{len(pods.get(name, []))} pods, Placed "
                        f"{placed.get('reason')}: {placed.get('message')!r}; want none and {phrase!r}",
                    )
                )
        small = pods.get("on-small", [])
        used = sorted(c for p in small for c in inv.CoreRange.parse(p["metadata"]["annotations"][CORES_ANNOTATION]).ids)
        if len(small) != 2 or used != [0, 1, 2, 3]:
            out.append(
                inv.Violation("expected", "on-small", f"cores {used} on a node with 4 allocatable; want 0-3 in 2 pods")
            )
        return out

    h.converge("nodes with odd data", since=since, extra=explained)


def assert_api_rejects(kubectl: Callable, case: bad_specs.BadSpec, name: str, pool: str | None = None) -> None:
    """``kubectl create`` of the bad spec fails with every phrase of ``case.says``; nothing is stored."""
    result = kubectl("create", "-f", "-", input=json.dumps(case.build(name, pool)), check=False)
    assert result.returncode != 0, f"{case.id}: the API server accepted it"
    for phrase in case.says:
        assert phrase in result.stderr, f"{case.id}: {phrase!r} not in {result.stderr.strip()!r}"
    stored = kubectl("get", "ninf", "-o", "name", check=False).stdout.split()
    assert not any(line.endswith(f"/{name}") for line in stored), f"{case.id}: {name} was stored anyway"


def api_rejects_bad_specs(h: Harness) -> None:
    """Every spec of the API-level corpus is refused at create time with its message."""
    for index, case in enumerate(bad_specs.API_REJECTED):
        assert_api_rejects(h.kubectl, case, f"bad-{index}", h.pool)
        h.fault("invalid spec (API server)")
    h.record.checks += 1


def operator_refuses_bad_specs(h: Harness) -> None:
    """Specs that pass the schema but cannot be served get no pod and Placed=False with a reason
    saying why; a valid resource created with them is served all the same."""
    h.fleet(bad_specs.OPERATOR_FLEET)
    refused = {f"refused-{index}": case for index, case in enumerate(bad_specs.OPERATOR_REFUSED)}
    h.apply(*[case.build(name, h.pool) for name, case in refused.items()])
    h.apply(bad_specs.valid("good", h.pool))
    since = h.fault("invalid specs (operator)")

    def explained(snapshot: inv.Snapshot) -> list[inv.Violation]:
        by_name = {i["metadata"]["name"]: i for i in snapshot.inferences if i["metadata"]["namespace"] == h.namespace}
        pods = _pods(snapshot, h.namespace)
        out = []
        for name, case in refused.items():
            placed = inv.condition(by_name.get(name, {}), "Placed")
            message = placed.get("message", "")
            if pods.get(name) or placed.get("reason") != case.reason or not all(p in message for p in case.says):
                out.append(
                    inv.Violation(
                        "expected",
                        f"{name} ({case.id})",
                        f"{len(pods.get(name, []))} pods, Placed {placed.get('reason')}: {message!r}; "
                        f"want no pod, {case.reason} saying {case.says}",
                    )
                )
        return out

    h.converge("invalid specs (operator)", since=since, extra=all_of(explained, replicas_ready(h, {"good": 1})))


SCENARIOS: dict[str, Callable[[Harness], None]] = {
    fn.__name__: fn
    for fn in (
        api_rejects_bad_specs,
        operator_refuses_bad_specs,
        odd_nodes,
        foreign_pods,
        node_cordoned,
        node_deleted,
        node_not_ready,
        pod_delete_storm,
        failed_pods_recreated,
        terminating_pod_keeps_cores,
        delete_recreate_loop,
        fifty_resources_four_nodes,
        kube_apiserver_restart,
        operator_starts_while_apiserver_frozen,
        etcd_restart,
        faults_while_operator_down,
        rollout_with_operator_kills,
        operator_sigkill_during_scale_up,
    )
}
"""Every scenario, in the order chaos.py runs them (cheap ones first)."""
