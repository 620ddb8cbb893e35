"""Everything the operator writes to the API server, and what each failure means for the caller.

It creates and deletes pods, patches a NeuronInference's status and posts Events; nothing else
(the chart's RBAC grants exactly these). Each write first passes leader election's fence and is
counted (``neuronplace_api_writes_total``). The API clients are constructor arguments, so tests
hand in a small fake that raises :class:`ApiException` with the status they want to see handled.

A failed write becomes one of two errors (:func:`classify`):

- :class:`Temporary`: try again later. 409 (a conflict: our cache is behind) after 0.2 s, 429
  after the server's ``Retry-After`` (1 s without one); anything else (403 quota or RBAC, 404
  namespace gone, 5xx, a timeout, a dropped connection) after the work queue's exponential
  backoff. It is a :class:`~neuronplace.operator.workqueue.Retry`, so a reconcile that lets it
  through is retried accordingly.
- :class:`Permanent`: 400 or 422, the API server refused the object itself. Trying again with the
  same spec gives the same answer; the reconcile reports it in the ``Placed`` condition and does
  not retry until the spec changes.

Deleting a pod or patching the status of an inference that is already gone (404) is not an error:
what was wanted has happened. Events are best-effort: a failure is logged at debug level and
never fails a reconcile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from neuronplace.operator import metrics as mx
from neuronplace.operator.workqueue import Retry
from neuronplace.placement import events as ev
from neuronplace.placement.names import GROUP, PLURAL, VERSION
from neuronplace.placement.status import now_rfc3339

log = logging.getLogger("neuronplace.operator")

# Per-call API timeouts (connect, read) of every call the operator makes itself: a hung call must
# not hold a worker forever.
API_TIMEOUT = (5, 30)

CONFLICT_RETRY = 0.2  # seconds after a 409: the watch event that brings the cache up to date is close behind
THROTTLE_RETRY = 1.0  # seconds after a 429 without a usable Retry-After

REFUSED = (400, 422)  # the object itself is refused: permanent for this spec

# What a failed call raises: an HTTP answer (ApiException), or none at all (urllib3's timeouts and
# protocol errors, socket errors).
_CALL_ERRORS = (ApiException, HTTPError, OSError)


class Temporary(Retry):
    """A write that may succeed later; ``delay`` None means after the work queue's backoff."""

    def __init__(self, status: int | None, message: str, delay: float | None) -> None:
        super().__init__(delay, message if status is None else f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Permanent(Exception):
    """A write the API server refused for what it carries (400/422): not retried for this spec."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def classify(error: Exception) -> Temporary | Permanent:
    """The outcome of a failed API call (an :class:`ApiException`, or an error with no HTTP answer)."""
    if not isinstance(error, ApiException):
        return Temporary(None, str(error) or type(error).__name__, None)
    status, message = error.status, api_message(error)
    if status in REFUSED:
        return Permanent(status, message)
    if status == 409:
        return Temporary(status, message, CONFLICT_RETRY)
    if status == 429:
        return Temporary(status, message, retry_after(error, THROTTLE_RETRY))
    return Temporary(status, message, None)


def retry_after(error: ApiException, default: float) -> float:
    """Seconds from a 429's ``Retry-After`` header (or ``default``)."""
    headers = getattr(error, "headers", None) or {}
    try:
        return max(float(headers.get("Retry-After") or headers.get("retry-after")), 0.1)
    except (TypeError, ValueError):
        return default


def api_message(error: Exception) -> str:
    """The API server's own message from an error's body (a Status object), else its reason."""
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(error, "reason", None) or error)


_RESOURCE_CLAIMS = ("resource.k8s.io", "v1", "resourceclaims")  # group, version, plural


class Writer:
    """The operator's writes, through the given core (``CoreV1Api``) and custom-objects
    (``CustomObjectsApi``) clients. Each passes ``fence`` first (leader election's
    :meth:`~.leader.Elector.writing`: it refuses, or ends the process, when this one no longer
    leads) and is counted in ``neuronplace_api_writes_total``."""

    def __init__(
        self, core: Any, custom: Any, fence: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    ) -> None:
        self.core = core
        self.custom = custom
        self.fence = fence

    @contextlib.contextmanager
    def _writing(self, verb: str, resource: str) -> Iterator[None]:
        with self.fence():
            mx.METRICS.wrote(verb, resource)
            yield

    def create_pod(self, namespace: str, pod: Mapping[str, Any]) -> dict:
        """Create the pod; returns it as the API server stored it. Raises Temporary or Permanent."""
        try:
            # Plain JSON back, not a client model object converted back into a dict: ~0.6 ms of CPU
            # less per pod, and the operator's CPU is what placement speed is made of here.
            with self._writing("create", "pods"):
                response = self.core.create_namespaced_pod(
                    namespace, pod, _request_timeout=API_TIMEOUT, _preload_content=False
                )
        except _CALL_ERRORS as error:
            raise classify(error) from error
        return json.loads(response.data)

    def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> bool:
        """Delete the pod (``force``: with no grace period); False when it was already gone."""
        options = k8s.V1DeleteOptions(grace_period_seconds=0 if force else None)
        try:
            with self._writing("delete", "pods"):
                self.core.delete_namespaced_pod(name, namespace, body=options, _request_timeout=API_TIMEOUT)
        except _CALL_ERRORS as error:
            if isinstance(error, ApiException) and error.status == 404:
                return False
            raise classify(error) from error
        return True

    # ResourceClaims through the custom-objects client, which reads and writes any API group.
    def create_resource_claim(self, namespace: str, claim: Mapping[str, Any]) -> dict:
        """Create a ResourceClaim; returns it as stored. Raises Temporary or Permanent."""
        try:
            return self.custom.create_namespaced_custom_object(
                *_RESOURCE_CLAIMS[:2], namespace, _RESOURCE_CLAIMS[2], claim, _request_timeout=API_TIMEOUT
            )
        except _CALL_ERRORS as error:
            raise classify(error) from error

    def read_resource_claim(self, namespace: str, name: str) -> dict | None:
        """The ResourceClaim as it is now, None when there is none."""
        try:
            return self.custom.get_namespaced_custom_object(
                *_RESOURCE_CLAIMS[:2], namespace, _RESOURCE_CLAIMS[2], name, _request_timeout=API_TIMEOUT
            )
        except _CALL_ERRORS as error:
            if isinstance(error, ApiException) and error.status == 404:
                return None
            raise classify(error) from error

    def delete_resource_claim(self, namespace: str, name: str) -> bool:
        """Delete a ResourceClaim; False when it was already gone."""
        try:
            self.custom.delete_namespaced_custom_object(
                *_RESOURCE_CLAIMS[:2], namespace, _RESOURCE_CLAIMS[2], name, _request_timeout=API_TIMEOUT
            )
        except _CALL_ERRORS as error:
            if isinstance(error, ApiException) and error.status == 404:
                return False
            raise classify(error) from error
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch a NeuronInference's status; False when the inference is gone."""
        try:
            with self._writing("patch", f"{PLURAL}/status"):
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _request_timeout=API_TIMEOUT
                )
        except _CALL_ERRORS as error:
            if isinstance(error, ApiException) and error.status == 404:
                return False
            raise classify(error) from error
        return True

    def post_event(self, inference: Mapping[str, Any], reason: str, message: str, type_: str = ev.NORMAL) -> bool:
        """Post an Event about the inference; False (and a debug line) when that failed."""
        meta = inference["metadata"]
        try:
            with self._writing("create", "events"):
                response = self.core.create_namespaced_event(
                    meta["namespace"],
                    ev.build_event(inference, reason, message, type_, now=now_rfc3339(dt.datetime.now(dt.UTC))),
                    _request_timeout=API_TIMEOUT,
                    _preload_content=False,
                )
            response.drain_conn()  # the answer is not needed; its connection goes back to the pool
        except Exception as error:  # events are best-effort: never fail a reconcile for one
            log.debug("could not post event %s for %s: %s", reason, meta.get("name"), error)
            return False
        return True
