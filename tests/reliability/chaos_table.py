"""The chaos table printed at the end of a run that ran reliability scenarios (a pytest plugin,
registered by ``tests/conftest.py``: the controller of an xdist run loads no conftest below
``tests/``, and it is the one that prints).

- ``chaos_record`` (session): counts faults, checks, violations, convergence times and what the
  invariant monitor saw in every scenario run in the session (a session is an xdist worker).
- Each xdist worker hands its record to the controller when it finishes; the controller adds the
  records up and prints one table.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from neuronplace.local.reliability import harness as hs

_RECORD_KEY = pytest.StashKey[hs.ChaosRecord]()


def _record(config: pytest.Config) -> hs.ChaosRecord:
    if _RECORD_KEY not in config.stash:
        config.stash[_RECORD_KEY] = hs.ChaosRecord()
    return config.stash[_RECORD_KEY]


@pytest.fixture(scope="session")
def chaos_record(request: pytest.FixtureRequest) -> hs.ChaosRecord:
    return _record(request.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # set on an xdist worker only
    record = session.config.stash.get(_RECORD_KEY, None)
    if workeroutput is not None and record is not None:
        workeroutput["chaos_record"] = dataclasses.asdict(record)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist, on the controller: a worker finished; add its record to the run's."""
    theirs = getattr(node, "workeroutput", {}).get("chaos_record")
    if not theirs:
        return
    ours = _record(node.config)
    for field in dataclasses.fields(ours):
        value, more = getattr(ours, field.name), theirs[field.name]
        if isinstance(value, dict):
            value.update(more)
        elif isinstance(value, list):
            value.extend(tuple(item) if isinstance(item, list) else item for item in more)
        else:
            setattr(ours, field.name, value + more)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    record = config.stash.get(_RECORD_KEY, None)
    if record is not None and record.scenarios:
        terminalreporter.section("chaos table")
        seed = int(os.environ.get("NEURONPLACE_CHAOS_SEED", "1"))
        terminalreporter.write_line(hs.format_table(record, seed))
