"""The ruling for one inference: its spec and the cluster view → every action and the status (pure).

:func:`rule` is the whole decision. The operator reads the API into a :class:`View`, calls it under
its cache lock, carries the actions out in order and writes the status; ``neuronplace plan`` calls it
on a saved cluster state, so its answer is the operator's. In order:

1. an inference in the operator's own namespace (``NamespaceNotServed``) or with an invalid spec
   (``InvalidSpec``: the schema's rules, the pod-template policy, a system priority class the rules
   do not allow) is refused: its capacity requests go, the status says why, nothing else happens;
2. which replica pods go and which replicas need one (:func:`.replica_pods.decide`: failures and
   their backoff, unschedulable and outdated pods, lost nodes, kube-scheduler's silence);
3. the missing replicas are placed one by one, by the paths ``spec.placement.deviceManagement``
   allows (:mod:`.dra_placement`: on a DRA node a replica also gets a ResourceClaim, created
   first), each reservation entered in the view's ledger and usage at once (so the next ruling, for
   any inference, sees those cores taken), avoiding the nodes where their recent attempts were
   refused and following their volumes; their pods are built;
4. replicas on nodes with unhealthy Neuron hardware are moved off them, a few at a time, when a
   trial placement by the same paths finds them room (:mod:`.moves`; ``Healthy`` condition), and a
   ruling with replicas waiting looks again when a node healthy again is used again (:mod:`.health`);
5. every replica that fits nowhere, and would on a new node, keeps one capacity request
   (:mod:`.capacity_upkeep`) within :mod:`.request_limits` (only on managed nodes, none again where
   a waiting replica's request was bound, a few per replica a minute); none under Direct binding
   (a capacity request is a pod kube-scheduler places, and nothing but the operator may place pods
   on Direct-bound nodes).

What the API server then says to the creates is judged by :func:`.creation.judge`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.placement import capacity_requests as cp
from neuronplace.placement import failures as fl
from neuronplace.placement.capacity_upkeep import (
    SETTLE_SECONDS,
    RequestKey,
    crowded_by,
    key_of_request,
    make_room,
    upkeep,
)
from neuronplace.placement.claims import pod_key
from neuronplace.placement.dra import lnc_of
from neuronplace.placement.dra_placement import Path, device_management, dra_placement, dra_pod, paths
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.moves import Moves, move_policy, plan_moves
from neuronplace.placement.names import (
    BINDING_DIRECT,
    BINDING_SCHEDULER,
    CAPACITY_PRIORITY_CLASS,
    DEVICE_MANAGEMENT_DRA,
    REASON_DRA_NEEDS_SCHEDULER,
    REASON_INVALID_SPEC,
    REASON_NAMESPACE_NOT_SERVED,
    REASON_UNSCHEDULABLE,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.pods import build_pod, pod_name
from neuronplace.placement.podsecurity import BASELINE, TemplatePolicy
from neuronplace.placement.priority import priority_refusal
from neuronplace.placement.replica_pods import SCHEDULER_SILENCE_SECONDS, Deletion, decide
from neuronplace.placement.request import ReplicaPlacement, avoiding, placement_request
from neuronplace.placement.request_limits import admit, excluded_nodes, node_expressions
from neuronplace.placement.resource_claims import build_resource_claim, claim_pod, resource_claim_key
from neuronplace.placement.search import place_one
from neuronplace.placement.status import Problem, scheduler_silence, summarize_unplaceable
from neuronplace.placement.usage import Usage
from neuronplace.placement.validation import namespace_refusal, validate
from neuronplace.placement.volumes import consumer_node, volume_constraint
from neuronplace.runtime.coreset import CoreRange


@dataclass(frozen=True)
class Rules:
    """The operator settings a ruling depends on (``OperatorSettings.rules()``; the other settings
    say how the operator runs, not what it decides)."""

    numbering: str = "device-local"
    binding: str = BINDING_SCHEDULER  # the mode when the inference's spec.placement.binding says none
    node_grace_seconds: float = 60.0
    unschedulable_seconds: float = 10.0
    scheduler_silence_seconds: float = SCHEDULER_SILENCE_SECONDS
    failure_backoff_seconds: float = fl.BACKOFF_FIRST_SECONDS
    max_failure_backoff_seconds: float = fl.BACKOFF_MAX_SECONDS
    capacity_settle_seconds: float = SETTLE_SECONDS  # read by the operator (:func:`.capacity_upkeep.to_create_now`)
    operator_namespace: str = ""
    serve_operator_namespace: bool = False
    allow_system_priority: bool = False
    policy: TemplatePolicy = BASELINE
    capacity_requests: bool = True
    capacity_request_image: str = "registry.k8s.io/pause:3.10"
    capacity_priority_class: str = CAPACITY_PRIORITY_CLASS
    node_selector: str = ""  # the nodes the operator manages: capacity requests ask for one of them

    @property
    def failure_backoff(self) -> fl.Backoff:
        """How long a replica waits after failed attempts."""
        return fl.Backoff(self.failure_backoff_seconds, self.max_failure_backoff_seconds)


@dataclass
class View:
    """What one ruling reads of the cluster. ``ledger`` and ``usage`` are live: the ruling reserves
    the replicas it places in them; everything else is only read."""

    pods: Sequence[Mapping[str, Any]]  # the inference's pods (labelled with its name)
    nodes: Mapping[str, Mapping[str, Any]]  # every node by name
    fleet: Fleet  # the managed nodes as placement sees them
    ledger: Ledger
    usage: Usage
    claims: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)  # PVCs by (namespace, name)
    volumes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # PVs by name
    classes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # StorageClasses by name
    priority_classes: Mapping[str, int] = field(default_factory=dict)  # PriorityClass name → value
    requests: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the inference's capacity requests by name
    requests_on: Callable[[str], Iterable[Mapping[str, Any]]] = lambda node: ()  # capacity requests bound to a node
    last_known: Mapping[int, tuple[str, CoreRange]] = field(default_factory=dict)  # where each replica last ran
    history: Mapping[int, fl.ReplicaHistory] = field(default_factory=dict)  # each replica's failed attempts
    # (generation, problem): the API server refused the pod of that spec generation; no pod is
    # created again until the generation changes.
    refused: tuple[int | None, Problem] | None = None
    # Nodes the inference's capacity requests avoid, and when each replica's were made (Unix
    # seconds): :mod:`.request_limits`.
    excluded: frozenset[str] = frozenset()
    requests_made: Mapping[int, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Creation:
    """A replica placed (its cores reserved) and the pod to create for it; on a DRA node, the
    ResourceClaim to create first (its chips reserved under the claim's key)."""

    placement: ReplicaPlacement
    pod: dict
    resource_claim: dict | None = None


@dataclass(frozen=True)
class Ruling:
    """Every action for one inference, in the order to carry them out, and what the status says."""

    binding: str  # the binding mode in effect
    refusal: Problem | None = None  # NamespaceNotServed or InvalidSpec: nothing but the requests' deletion
    failures: tuple[fl.Failure, ...] = ()  # attempts that failed since the last look (an Event each)
    history: Mapping[int, fl.ReplicaHistory | None] = field(default_factory=dict)  # ordinal → history, None: forget
    deletions: tuple[Deletion, ...] = ()  # replica pods to delete (an Event each)
    silence: Problem | None = None  # kube-scheduler says nothing of pinned pods: Ready's reason, a Warning once
    make_room: tuple[RequestKey, ...] = ()  # capacity requests to delete before the pods are created
    creations: tuple[Creation, ...] = ()  # replica pods to create (concurrently)
    unplaceable: tuple[tuple[int, str], ...] = ()  # (replica, why it has no node)
    problem: Problem | None = None  # why replicas lack pods before any create is tried (Placed's reason)
    waiting_for_room: bool | None = None  # whether to look again when room frees (None: as before)
    request_deletions: tuple[RequestKey, ...] = ()  # capacity requests to delete after the creates
    # replica → capacity request pod to create (:func:`.capacity_upkeep.to_create_now` says when)
    request_creations: Mapping[int, dict] = field(default_factory=dict)
    waiting: frozenset[int] = frozenset()  # replicas waiting for a new node (WaitingForCapacity names them)
    assigned: Mapping[int, str] = field(default_factory=dict)  # waiting replica → the request standing for it
    excluded: frozenset[str] = frozenset()  # the nodes its capacity requests avoid from now on
    held: Mapping[int, str] = field(default_factory=dict)  # waiting replica → why its request is not made now
    requeue_after: float | None = None  # look again then, even without events
    unheard: int = 0  # pinned pods kube-scheduler has said nothing of (a gauge)
    # Replicas whose pod name another pod has (it holds cores or other resources on a node): no pod
    # is made and nothing reserved under that name (which would hide what that pod holds).
    name_taken: tuple[int, ...] = ()
    health: Problem | None = None  # replicas on unhealthy nodes: the Healthy condition's reason (:mod:`.moves`)


def binding_of(inference: Mapping[str, Any], rules: Rules) -> str:
    """The binding mode in effect: the inference's own, else the rules'."""
    placement = (inference.get("spec") or {}).get("placement") or {}
    return placement.get("binding") or rules.binding


def rule(inference: Mapping[str, Any], view: View, rules: Rules, now: dt.datetime) -> Ruling:
    """The ruling for ``inference`` on ``view`` at ``now`` (reserves the placed replicas in the view)."""
    meta = inference["metadata"]
    namespace = meta["namespace"]
    binding = binding_of(inference, rules)
    refusal = namespace_refusal(namespace, rules.operator_namespace, rules.serve_operator_namespace)
    if refusal is not None:
        return _refused(inference, view, rules, binding, Problem(REASON_NAMESPACE_NOT_SERVED, refusal), now)
    invalid = validate(inference, rules.policy) or priority_refusal(
        inference, view.priority_classes, rules.allow_system_priority
    )
    if invalid is not None:
        return _refused(inference, view, rules, binding, Problem(REASON_INVALID_SPEC, invalid), now)

    refused = view.refused[1] if view.refused and view.refused[0] == meta.get("generation") else None
    decision = decide(
        inference,
        view.pods,
        view.nodes,
        now=now,
        node_grace_seconds=rules.node_grace_seconds,
        last_known=view.last_known,
        history=view.history,
        unschedulable_seconds=rules.unschedulable_seconds,
        scheduler_silence_seconds=rules.scheduler_silence_seconds,
        failure_backoff=rules.failure_backoff,
    )
    ruling = Ruling(
        binding=binding,
        failures=decision.failures,
        history=decision.history,
        deletions=decision.deletions,
        silence=scheduler_silence(decision.unheard),
        problem=refused,
        requeue_after=decision.requeue_after,
        unheard=len(decision.unheard),
    )
    if decision.create and refused is None:
        now_ns = int(now.timestamp()) * 1_000_000_000 + now.microsecond * 1_000
        ruling = _place(inference, view, rules, ruling, decision.create, decision.avoid, decision.prefer, now_ns)
    ruling = _move(inference, view, rules, ruling, now)
    return _keep_requests(inference, view, rules, ruling, now)


def _refused(
    inference: Mapping[str, Any], view: View, rules: Rules, binding: str, refusal: Problem, now: dt.datetime
) -> Ruling:
    """A refused inference: no pod is touched, none waits (so its capacity requests go)."""
    return _keep_requests(inference, view, rules, Ruling(binding=binding, refusal=refusal), now)


def _place(
    inference: Mapping[str, Any],
    view: View,
    rules: Rules,
    ruling: Ruling,
    create: Sequence[int],
    avoid: Mapping[int, frozenset[str]],
    prefer: Mapping[int, tuple[str, CoreRange]],
    now_ns: int,
) -> Ruling:
    """Place the replicas in ``create`` (reserving them in the view) and build their pods
    (``now_ns``: the allocation time they carry, Unix nanoseconds)."""
    meta = inference["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    template = inference["spec"].get("template") or {}
    volumes = volume_constraint(
        template.get("spec") or {}, namespace, view.claims, view.volumes, view.classes, binding=ruling.binding
    )
    if volumes.problem is not None:
        return dataclasses.replace(
            ruling,
            problem=Problem(volumes.reason, volumes.problem),
            unplaceable=tuple((replica, volumes.problem) for replica in create),
            waiting_for_room=True,  # a claim, volume or class event looks again
        )
    # Where the replicas' shared claim, still unbound, is going to be bound (if anywhere yet).
    follow = consumer_node(view.pods) if volumes.first_consumer else None
    request = placement_request(inference, rules.numbering, volumes.node_terms)
    routes, dra_closed = paths(inference, request, view.fleet, ruling.binding)
    dra_only = device_management(inference) == DEVICE_MANAGEMENT_DRA
    if not routes:
        reason = REASON_DRA_NEEDS_SCHEDULER if ruling.binding == BINDING_DIRECT else REASON_UNSCHEDULABLE
        message = dra_closed or "no node offers the device management spec.placement.deviceManagement asks for"
        return dataclasses.replace(
            ruling,
            problem=Problem(reason, message),
            unplaceable=tuple((replica, message) for replica in create),
            waiting_for_room=True,
        )
    creations: list[Creation] = []
    unplaceable: list[tuple[int, str]] = []
    waiting: set[int] = set()  # replicas a new node would take: they get capacity requests
    name_taken: list[int] = []
    for replica in create:
        pod = pod_key(namespace, pod_name(name, replica))
        if _held_by_another(view, pod):
            name_taken.append(replica)
            continue
        kept_off = avoid.get(replica, frozenset())
        placing = request if follow is None else dataclasses.replace(request, volume_terms=volumes.on_node(follow))
        creation, message = _place_replica(
            inference, view, rules, ruling.binding, routes, placing, replica, pod, kept_off, prefer, now_ns
        )
        if dra_closed is not None:
            message = f"{message}; {dra_closed}"
        if creation is not None:
            creations.append(creation)
            follow = creation.placement.node if volumes.first_consumer else None
        elif kept_off:  # its own failures keep it off nodes: no new node is asked for it
            unplaceable.append((replica, f"{message}; avoiding {', '.join(sorted(kept_off))} after failed attempts"))
        elif not rules.capacity_requests or dra_only:
            # A capacity request asks for the device plugin's cores: none stands for a DRA-only replica.
            unplaceable.append((replica, message))
        elif (room := cp.counted_room(placing, view.fleet, view.usage)) is not None:
            unplaceable.append((replica, f"{message}; {cp.no_request_message(room)}"))
        else:
            unplaceable.append((replica, message))
            waiting.add(replica)
    problem = None
    if unplaceable:
        problem = Problem(REASON_UNSCHEDULABLE, summarize_unplaceable(unplaceable))
    return dataclasses.replace(
        ruling,
        creations=tuple(creations),
        unplaceable=tuple(unplaceable),
        problem=problem,
        waiting_for_room=bool(unplaceable),
        waiting=frozenset(waiting),
        name_taken=tuple(name_taken),
    )


def _place_replica(
    inference: Mapping[str, Any],
    view: View,
    rules: Rules,
    binding: str,
    routes: Sequence[Path],
    placing,
    replica: int,
    pod: str,
    kept_off: frozenset[str],
    prefer: Mapping[int, tuple[str, CoreRange]],
    now_ns: int,
) -> tuple[Creation | None, str]:
    """Place one replica by the first path that takes it (:func:`_reserve`) and build its pod (and,
    on a DRA node, its ResourceClaim): (its creation, ""), or (None, why the last path could not)."""
    reserved = _reserve(view, routes, placing, replica, pod, kept_off, prefer)
    if isinstance(reserved, str):
        return None, reserved
    kind, result = reserved
    if kind != DEVICE_MANAGEMENT_DRA:
        built = build_pod(inference, result, numbering=rules.numbering, binding=binding, now_ns=now_ns)
        return Creation(result, built), ""
    node = view.fleet.by_name[result.node]
    assert node.dra is not None and node.topology is not None, "a DRA path only reaches DRA nodes"
    placed = dra_placement(result, placing.cores_per_replica, placing.processes_per_replica)
    name = pod.split("/", 1)[1]
    built = dra_pod(build_pod(inference, placed, numbering=rules.numbering, binding=binding, now_ns=now_ns))
    claim = build_resource_claim(
        inference, name, len(result.devices), node.dra, lnc_of(node.instance_type, node.topology.cores_per_chip)
    )
    return Creation(placed, claim_pod(built, name), claim), ""


def _reserve(
    view: View,
    routes: Sequence[Path],
    placing,
    replica: int,
    pod: str,
    kept_off: frozenset[str],
    prefer: Mapping[int, tuple[str, CoreRange]],
) -> tuple[str, ReplicaPlacement] | str:
    """Reserve room for one replica as the pod key ``pod`` by the first path that takes it: (the
    path's kind, its placement), or why the last path could not. A DRA replica's chips must form one
    connected group; they are reserved under its ResourceClaim's key, its other requests under the
    pod's (:func:`_give_back` frees both)."""
    message = "no node offers the device management spec.placement.deviceManagement asks for"
    for route in routes:
        shaped = dataclasses.replace(route.request, volume_terms=placing.volume_terms)
        dra = route.kind == DEVICE_MANAGEMENT_DRA
        holder = resource_claim_key(*pod.split("/", 1)) if dra else pod
        result = place_one(
            avoiding(shaped, kept_off),
            replica,
            view.fleet,
            view.ledger,
            holder,
            prefer=None if dra else prefer.get(replica),
            usage=view.usage,
        )
        if not isinstance(result, ReplicaPlacement):
            message = result.message
            continue
        if dra:
            node = view.fleet.by_name[result.node]
            assert node.dra is not None, "a DRA path only reaches DRA nodes"
            if not node.dra.same_group(result.devices):
                view.ledger.forget(holder)
                view.usage.forget(holder)
                message = f"{result.node}'s free chips form no connected group of {len(result.devices)}"
                continue
            # The pod, not its claim, requests cpu, memory and the rest: held under the pod's key.
            view.usage.forget(holder)
            view.usage.reserve(result.node, pod, shaped.requests)
        return route.kind, result
    return message


def _give_back(view: View, pod: str) -> None:
    """Free what :func:`_reserve` holds for the pod key ``pod`` (under its claim's key too)."""
    for holder in (pod, resource_claim_key(*pod.split("/", 1))):
        view.ledger.forget(holder)
        view.usage.forget(holder)


def _move(inference: Mapping[str, Any], view: View, rules: Rules, ruling: Ruling, now: dt.datetime) -> Ruling:
    """Move replicas off unhealthy nodes (after the missing ones are placed: the room they took is
    not there for a move); a ruling with replicas waiting looks again when a settling node is usable."""
    moves = _plan_moves(inference, view, rules, ruling) if view.fleet.unhealthy else Moves()
    retry = ruling.requeue_after
    settles = view.fleet.settles_at
    if settles is not None and (ruling.unplaceable or moves.waiting_for_room):
        wait = max(settles - now.timestamp(), 0.5)
        retry = wait if retry is None else min(retry, wait)
    return dataclasses.replace(
        ruling,
        deletions=ruling.deletions + moves.deletions,
        health=moves.health,
        waiting_for_room=True if moves.waiting_for_room else ruling.waiting_for_room,
        requeue_after=retry,
    )


def _plan_moves(inference: Mapping[str, Any], view: View, rules: Rules, ruling: Ruling) -> Moves:
    meta, spec = inference["metadata"], inference["spec"]
    namespace, name = meta["namespace"], meta["name"]
    volumes = volume_constraint(
        (spec.get("template") or {}).get("spec") or {},
        namespace,
        view.claims,
        view.volumes,
        view.classes,
        binding=ruling.binding,
    )
    request = placement_request(inference, rules.numbering, volumes.node_terms)
    # The paths a missing replica would take: room a replica can never use (the other kind of node,
    # DRA chips in no connected group) is no room to move to.
    routes, dra_closed = paths(inference, request, view.fleet, ruling.binding)
    trials: list[str] = []

    def trial(replica: int) -> str | None:
        # Under a key of its own, given back below (so two moves never count the same room).
        key = f"{pod_key(namespace, pod_name(name, replica))}#move"
        reserved = _reserve(view, routes, request, replica, key, frozenset(), {})
        if isinstance(reserved, str):
            return reserved if dra_closed is None else f"{reserved}; {dra_closed}"
        trials.append(key)
        return None

    moves = plan_moves(
        name,
        meta.get("uid"),
        1 if spec.get("replicas") is None else spec["replicas"],
        view.pods,
        ruling.deletions,
        move_policy(spec),
        view.fleet,
        trial,
    )
    for key in trials:
        _give_back(view, key)
    return moves


def _held_by_another(view: View, pod: str) -> bool:
    """Whether a pod that is not ours already has the pod key ``pod`` (a replica's): the ledger
    holds it as foreign, or only the usage counts it (a reservation is in both)."""
    holding = view.ledger.holding_of(pod)
    if holding is not None:
        return not holding.managed
    claim = view.ledger.holding_of(resource_claim_key(*pod.split("/", 1)))
    if claim is not None and not claim.managed:
        return True  # a foreign ResourceClaim has the name the replica's claim would take
    return view.usage.held_by(pod) is not None and not view.ledger.holds(pod)


def _keep_requests(inference: Mapping[str, Any], view: View, rules: Rules, ruling: Ruling, now: dt.datetime) -> Ruling:
    """Add the capacity requests to delete and to create around the ruling's replica pods. The
    replicas that wait for a new node keep one each, unless the rules make none or the inference is
    Direct-bound (a capacity request is a pod kube-scheduler places, and nothing but the operator may
    place pods on Direct-bound nodes); within :mod:`.request_limits` (managed nodes, none where a
    waiting replica's request was bound, a few per replica a minute)."""
    meta = inference["metadata"]
    keep = rules.capacity_requests and ruling.binding != BINDING_DIRECT
    waiting = ruling.waiting if keep else frozenset()
    mine = list(view.requests.values())
    placed = [(c.placement.replica, c.placement.node) for c in ruling.creations]
    room = make_room(mine, placed, view.requests_on, view.ledger.free_count) if placed else []
    # Its requests that go because kube-scheduler bound them where the ledger has no room.
    kept = [r for r in mine if key_of_request(r) not in room]
    displaced = set(crowded_by(kept, view.requests_on, view.ledger.free_count, room))
    bound_to = [r["spec"]["nodeName"] for r in kept if key_of_request(r) in displaced]
    excluded = excluded_nodes(view.excluded, bound_to, waiting, view.fleet)
    # Nor on a node with unhealthy Neuron hardware: kube-scheduler would bind a request there (it
    # reads no health condition), and a request bound where no replica may go asks no autoscaler.
    where = node_expressions(rules.node_selector, excluded | view.fleet.unhealthy.keys(), view.fleet)
    built = {replica: _request_pod(inference, rules, replica, where) for replica in sorted(waiting)}
    wanted_hash = next(iter(built.values()))["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] if built else ""
    todo = upkeep(
        meta["namespace"],
        meta.get("uid"),
        waiting,
        mine,
        view.requests_on,
        view.ledger.free_count,
        wanted_hash,
        gone=room,
    )
    admission = admit(todo.create, view.requests_made, now)
    retry = ruling.requeue_after
    if admission.retry_after is not None:
        retry = admission.retry_after if retry is None else min(retry, admission.retry_after)
    return dataclasses.replace(
        ruling,
        make_room=tuple(room),
        request_deletions=todo.delete,
        request_creations={replica: built[replica] for replica in admission.now},
        waiting=waiting,
        assigned=todo.assigned,
        excluded=excluded,
        held=admission.held,
        requeue_after=retry,
    )


def _request_pod(inference: Mapping[str, Any], rules: Rules, replica: int, where: Sequence[dict]) -> dict:
    return cp.build_capacity_request(
        inference,
        replica,
        image=rules.capacity_request_image,
        priority_class=rules.capacity_priority_class,
        where=where,
    )
