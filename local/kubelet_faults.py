"""Kubelet-like pod faults on the local control plane, switched on per pod by annotations.

kwok has no kubelet: it never refuses a pod and its containers never exit. Two Stages of
``kwok-stages.yaml`` act out what a real kubelet does in those cases, and only for pods that carry
these annotations (every other pod runs as before). A test marks the pods of a NeuronInference
through its pod template's ``metadata.annotations``, which reach the replica pods unchanged.

Both stages act on a pod only once it is bound (``spec.nodeName``): a pod created unbound and bound
later by kube-scheduler is judged on the node it lands on, as a kubelet would.

- :data:`REJECT_ON_NODES`: comma-separated node names (no spaces), or ``*`` for every node. A pod
  bound to one of them is rejected at admission before any container starts: ``status.phase``
  Failed, ``status.reason`` :data:`REJECT_REASON` (default ``OutOfcpu``), ``status.message`` the
  kubelet's wording (``Pod was rejected: Node didn't have enough resource: cpu``) or
  :data:`REJECT_MESSAGE`. Naming only some nodes lets a test show that a rejected replica moves to a
  node that does not reject it.
- :data:`EXIT_AFTER`: a Go duration (``3s``, ``500ms``). That long after the pod turned Running its
  containers exit with :data:`EXIT_CODE` (default 1): phase Failed with a terminated container state
  (reason ``Error``), or Succeeded for exit code 0 (reason ``Completed``). This fires only where the
  pod's ``restartPolicy`` makes the exit final: ``Never``, or ``OnFailure`` with exit code 0. Under
  ``Always`` (and ``OnFailure`` with a failure) a kubelet restarts the container in place; that is
  not simulated, so the pod stays Running.
"""

from __future__ import annotations

from collections.abc import Iterable

REJECT_ON_NODES = "fault.neuronplace.io/reject-on-nodes"
REJECT_REASON = "fault.neuronplace.io/reject-reason"
REJECT_MESSAGE = "fault.neuronplace.io/reject-message"
EXIT_AFTER = "fault.neuronplace.io/exit-after"
EXIT_CODE = "fault.neuronplace.io/exit-code"

ANY_NODE = "*"
DEFAULT_REJECT_REASON = "OutOfcpu"
# The stages that read the annotations (names of Stages in kwok-stages.yaml).
REJECT_STAGE = "kubelet-reject"
EXIT_STAGE = "container-exit"


def rejected_on(nodes: Iterable[str] | str, reason: str = DEFAULT_REJECT_REASON, message: str | None = None) -> dict:
    """Annotations that have the simulated kubelet reject the pod on ``nodes`` (names, or ``"*"``)."""
    names = [nodes] if isinstance(nodes, str) else list(nodes)
    if not names or any(not name or "," in name or name != name.strip() for name in names):
        raise ValueError(f"node names must be non-empty, without commas or spaces: {names!r}")
    annotations = {REJECT_ON_NODES: ",".join(names), REJECT_REASON: reason}
    if message is not None:
        annotations[REJECT_MESSAGE] = message
    return annotations


def exits_after(seconds: float, code: int = 1) -> dict:
    """Annotations that have the pod's containers exit with ``code`` ``seconds`` after it runs."""
    if seconds < 0 or code < 0:
        raise ValueError(f"seconds and exit code must be >= 0, got {seconds} and {code}")
    return {EXIT_AFTER: f"{round(seconds * 1000)}ms", EXIT_CODE: str(code)}
