"""Which pods count as ours: the trust index behind :class:`~.ledger.Ledger`, and its reports.

Labels prove nothing (anyone who may create a pod can write them), so the ledger counts a pod as
managed only when its controller is a NeuronInference whose UID it trusts (:meth:`Ledger.trust`;
the offline tools trust every NeuronInference reference) and its range agrees with its own request
(the rules are in :mod:`.claims`). A pod is often seen before its NeuronInference, so the index
remembers which pods name which UID and re-judges them when that UID is trusted or distrusted.

A pod whose claim does not add up (a labelled pod nobody trusted, a range or id list that disagrees
with the request) is remembered with its reason and reported as an :class:`Inconsistency`; the
ledger adds the pods whose listed cores overlap (:meth:`Ledger.inconsistencies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from neuronplace.placement.claims import Claim, PodClaims


@dataclass(frozen=True)
class Inconsistency:
    """A pod whose claim on ``node`` does not add up, and why (a ``CLAIM_*`` reason from names)."""

    node: str
    pod: str
    reason: str


class TrustIndex:
    """The trusted NeuronInference UIDs, which pods name which UID, and the pods judged inconsistent."""

    def __init__(self, trusted: Iterable[str] = (), *, trust_any_inference: bool = False) -> None:
        self._trusted = set(trusted)
        self._trust_any = trust_any_inference
        self._read: dict[str, PodClaims] = {}  # pod → both readings, for pods with a NeuronInference controller
        self._pods_of_uid: dict[str, set[str]] = {}  # NeuronInference UID → pod keys in _read
        self._problems: dict[str, tuple[str, str]] = {}  # pod → (node, reason) of an inconsistent pod

    def trust(self, uid: str) -> bool:
        """Trust ``uid``; True when it was not trusted (then its pods must be re-judged)."""
        if uid not in self._trusted:
            self._trusted.add(uid)
            return True
        return False

    def distrust(self, uid: str) -> bool:
        """Stop trusting ``uid``; True when it was trusted (then its pods must be re-judged)."""
        if uid in self._trusted:
            self._trusted.discard(uid)
            return True
        return False

    def trusts(self, uid: str | None) -> bool:
        return uid is not None and (self._trust_any or uid in self._trusted)

    def index(self, pod: str, read: PodClaims | None) -> None:
        """Remember which NeuronInference UID the pod ``pod`` names, to re-judge it later."""
        old = self._read.pop(pod, None)
        if old is not None and old.inference_uid is not None:
            pods = self._pods_of_uid[old.inference_uid]
            pods.discard(pod)
            if not pods:
                del self._pods_of_uid[old.inference_uid]
        if read is not None and read.inference_uid is not None:
            self._read[pod] = read
            self._pods_of_uid.setdefault(read.inference_uid, set()).add(pod)

    def pods_of(self, uid: str) -> list[tuple[str, PodClaims]]:
        """The pods that name ``uid`` (pod key and reading), by pod key."""
        return [(pod, self._read[pod]) for pod in sorted(self._pods_of_uid.get(uid, ()))]

    def judge(self, pod: str, read: PodClaims | None) -> Claim | None:
        """The claim the pod ``pod`` holds as now trusted (None: nothing), remembering its problem."""
        claim, problem = read.judge(self.trusts(read.inference_uid)) if read is not None else (None, None)
        if problem is not None and read is not None:
            self._problems[pod] = (read.node, problem)
        else:
            self._problems.pop(pod, None)
        return claim

    def problem_of(self, pod: str) -> str | None:
        found = self._problems.get(pod)
        return found[1] if found is not None else None

    def problems(self) -> list[Inconsistency]:
        """The pods judged inconsistent, unsorted."""
        return [Inconsistency(node, pod, reason) for pod, (node, reason) in self._problems.items()]
