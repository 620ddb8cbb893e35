"""The full-list part of :class:`~.cache.Cache`: what :mod:`.sync` folds in at start-up and in a full resync.

A mixin of :class:`~.cache.Cache`, not a cache of its own: a full list folds into every cache the
watch events do, with the same methods. Each public method takes the cache's one lock once, for a
page or a step, so that a watch event never sees half of one; while a resync reads its lists the
watches' deletions are recorded (``deleted_during_resync``) so that the lists bring back no ghosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from neuronplace.operator.keys import Key
from neuronplace.placement.claims import pod_key
from neuronplace.placement.ledger import Holding


class FullLists:
    """Pages of the start-up and resync lists, the resync's bracket, and what the lists show gone."""

    def observe_nodes(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in a page of a full node list."""
        with self._lock:
            for node in page:
                self.observe_node(node)

    def observe_pods(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in a page of the start-up pod list (nothing is known yet, so every pod is taken)."""
        with self._lock:
            for pod in page:
                self.observe_pod(pod)

    def replace_storage(self, kind: str, slimmed: list[dict]) -> None:
        """Replace the cached objects of one storage kind with a full list."""
        with self._lock:
            self.storage.replace(kind, slimmed)

    def remember_start_up(self, priority_classes: Iterable[Mapping[str, Any]], inferences: Iterable[dict]) -> None:
        """Fold in the start-up lists of PriorityClasses and NeuronInferences together. The pods
        already folded in are foreign until their NeuronInference is known; each one remembered
        here turns its pods' claims into ours."""
        with self._lock:
            for priority_class in priority_classes:
                self.observe_priority_class(priority_class)
            for inference in inferences:
                self.remember_inference(inference)

    def begin_resync(self) -> set[str]:
        """Start recording what the watches delete while a full resync reads its lists; returns the
        nodes known now (one of them absent from the node list was deleted)."""
        with self._lock:
            self.deleted_during_resync = set()
            return set(self.nodes)

    def end_resync(self) -> None:
        with self._lock:
            self.deleted_during_resync = None

    def forget_nodes(self, names: Iterable[str]) -> None:
        """Drop the nodes a full list no longer shows (those still cached)."""
        with self._lock:
            for name in names:
                if name in self.nodes:
                    self.observe_node({"metadata": {"name": name}}, deleted=True)

    def observe_missed_pods(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in what a page of a resync's pod list shows that the watch missed. Pods already
        known are kept fresh by the watch, and a reservation whose create is under way is not a
        pod to take; never take a pod whose deletion the watch reported after this page was read."""
        with self._lock:
            deleted = self.deleted_during_resync or set()
            for pod in page:
                meta = pod["metadata"]
                key = pod_key(meta["namespace"], meta["name"])
                if (
                    not self.knows_pod(meta["namespace"], meta["name"])
                    and key not in self.inflight
                    and key not in deleted
                ):
                    self.observe_pod(pod)

    def compare_with_lists(
        self, listed_pods: set[str], listed_inferences: Mapping[Key, dict]
    ) -> tuple[list[str], list[Key]]:
        """What a resync's full lists lack: the pods ("ns/pod", sorted) and NeuronInferences cached
        but not listed, to be confirmed gone; the listed NeuronInferences the watch missed (and did
        not see deleted meanwhile) are remembered, in the same acquisition."""
        with self._lock:
            known = self.ledger.pods() | self.usage.pods() | {pod_key(ns, name) for ns, name in self.pods}
            missing_pods = sorted(known - listed_pods - self.inflight)
            missing_inferences = [key for key in self.inferences if key not in listed_inferences]
            deleted = self.deleted_during_resync or set()
            for key, inference in listed_inferences.items():
                if key not in deleted and key not in self.inferences:
                    self.remember_inference(inference)
        return missing_pods, missing_inferences

    def forget_vanished_pod(self, namespace: str, name: str) -> None:
        """Drop a pod confirmed gone that the watch never reported deleted; its cores are free."""
        with self._lock:
            self.observe_pod(
                {"metadata": {"namespace": namespace, "name": name, "labels": self.labels_of(namespace, name)}},
                deleted=True,
            )

    def forget_vanished_inference(self, key: Key) -> None:
        """Drop a NeuronInference confirmed gone that the watch never reported deleted."""
        with self._lock:
            self.forget_inference(key)

    def unreported_foreign(self, reported: set[str]) -> list[Holding]:
        """The foreign holdings whose pod is not in ``reported``, which gets them, in one acquisition:
        each foreign pod is reported once."""
        with self._lock:
            foreign = [h for h in self.ledger.foreign() if h.pod not in reported]
            reported |= {h.pod for h in foreign}
        return foreign
