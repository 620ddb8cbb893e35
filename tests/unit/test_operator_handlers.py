"""The kopf wiring keeps its controller in kopf's memo: handlers before start-up do nothing, and
afterwards every event and probe reaches the controller that memo holds."""

import asyncio

import kopf

from neuronplace.operator import handlers
from neuronplace.operator.controller import Controller
from neuronplace.operator.settings import OperatorSettings


class Recording(Controller):
    """A controller on no API at all that records the events handed to it."""

    def __init__(self) -> None:
        super().__init__(OperatorSettings(), core=None, custom=None)
        self.seen: list = []
        self.on_inference = lambda kind, body: self.seen.append(("inference", kind, body["metadata"]["name"]))
        self.on_pod = lambda kind, body: self.seen.append(("pod", kind, body["metadata"]["name"]))
        self.on_node = lambda kind, body: self.seen.append(("node", kind, body["metadata"]["name"]))


def event(kind: str, name: str) -> dict:
    return {"type": kind, "object": {"metadata": {"name": name, "namespace": "default"}}}


def deliver(memo: kopf.Memo) -> None:
    asyncio.run(handlers.inference_event(event=event("ADDED", "web"), memo=memo))
    asyncio.run(handlers.pod_event(event=event("MODIFIED", "web-0"), memo=memo))
    asyncio.run(handlers.node_event(event=event("DELETED", "n1"), memo=memo))


def test_before_start_up_the_probe_is_not_ready_and_events_are_dropped():
    memo = kopf.Memo()
    assert handlers.ledger_probe(memo=memo) == {"ready": False}
    deliver(memo)  # no controller yet: nothing to do, nothing raised
    asyncio.run(handlers.cleanup(memo=memo))


def test_events_and_probes_reach_the_controller_in_memo():
    controller = Recording()
    try:
        memo = kopf.Memo(controller=controller)
        deliver(memo)
        assert controller.seen == [
            ("inference", "ADDED", "web"),
            ("pod", "MODIFIED", "web-0"),
            ("node", "DELETED", "n1"),
        ]
        assert handlers.ledger_probe(memo=memo) == {"ready": True, "pods": 0, "nodes": 0, "queued": 0, "running": 0}
    finally:
        asyncio.run(controller.stop())


def test_no_controller_is_kept_in_module_state():
    assert not [name for name, value in vars(handlers).items() if isinstance(value, Controller)]
