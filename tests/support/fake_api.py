"""A fake Kubernetes API client for unit tests of the operator's writes: the core and the custom
objects API in one, handed to :class:`~neuronplace.operator.writes.Writer` as both."""

from __future__ import annotations

import json

from neuronplace.placement.claims import pinned_node

# The time the fake API server stamps on every pod it creates.
CREATED_AT = "2026-11-30T12:00:00Z"


class Response:
    """What the client returns for a call made with ``_preload_content=False``."""

    def __init__(self, body: dict) -> None:
        self.data = json.dumps(body).encode()
        self.drained = False

    def drain_conn(self) -> None:
        self.drained = True


class FakeApi:
    """Records every call in ``calls`` as ``(verb, namespace, name, detail)``: ``("create", ns, pod,
    kwargs)``, ``("delete", ns, pod, grace_period_seconds)``, ``("patch", ns, inference, body)``,
    ``("event", ns, reason, message)``. After recording, a call raises ``error`` if set; a pod create
    raises ``create_error`` if set. What succeeded is also in ``created`` (pod names), ``statuses``
    (the status patches) and ``events`` (``(reason, type)``).

    A created pod comes back with a UID and a creation time; with ``binds`` a pod pinned to a node
    comes back bound to it, as if kube-scheduler had bound it at once."""

    def __init__(self, error: Exception | None = None, *, create_error: Exception | None = None, binds=False) -> None:
        self.error = error
        self.create_error = create_error
        self.binds = binds
        self.calls: list[tuple] = []
        self.responses: list[Response] = []
        self.created: list[str] = []
        self.statuses: list[dict] = []
        self.events: list[tuple[str, str]] = []

    def pod_writes(self) -> list[tuple[str, str]]:
        """The pod creates and deletes made, in order, as ``(verb, pod)``."""
        return [(verb, name) for verb, _namespace, name, _detail in self.calls if verb in ("create", "delete")]

    def _answer(self, body: dict) -> Response:
        if self.error is not None:
            raise self.error
        response = Response(body)
        self.responses.append(response)
        return response

    def create_namespaced_pod(self, namespace, body, **kwargs):
        name = body["metadata"]["name"]
        self.calls.append(("create", namespace, name, kwargs))
        if self.create_error is not None:
            raise self.create_error
        spec = dict(body.get("spec") or {})
        if self.binds and pinned_node(body):
            spec["nodeName"] = pinned_node(body)
        metadata = {**body["metadata"], "uid": "u1", "creationTimestamp": CREATED_AT}
        response = self._answer({**body, "spec": spec, "metadata": metadata})
        self.created.append(name)
        return response

    def delete_namespaced_pod(self, name, namespace, body=None, **kwargs):
        self.calls.append(("delete", namespace, name, body.grace_period_seconds))
        return self._answer({})

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        _group, _version, namespace, _plural, name, body = args
        self.calls.append(("patch", namespace, name, body))
        response = self._answer({})
        self.statuses.append(body["status"])
        return response

    def create_namespaced_event(self, namespace, body, **kwargs):
        self.calls.append(("event", namespace, body["reason"], body["message"]))
        response = self._answer({})
        self.events.append((body["reason"], body["type"]))
        return response
