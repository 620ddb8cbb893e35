"""pytest fixtures that run the operator on the session's local cluster (registered by ``tests/conftest.py``
beside ``neuronplace.local.pytest_plugin``).

- ``operator_settings`` (session): the ``neuronplace run`` settings every operator a test starts gets
  unless the test says otherwise: the short timings of :data:`~.operator_process.TEST_TIMINGS`, so
  that what a test waits for happens in seconds. Defined here, once for every test directory: the
  shared operator is session-scoped, and the first test that starts it decides its settings. A
  setting is a keyword: ``resync_seconds=10`` is ``--resync-seconds 10``, ``True`` a bare flag,
  ``None`` leaves the flag out.
- ``operator_factory`` (function): ``operator_factory(*args, binding=<the test's>, env=None,
  log_name=None, start=True, **settings) -> OperatorProcess`` starts an operator of the test's own,
  with the default settings updated by ``settings``, plus raw ``args`` and environment variables
  ``env``; stopped when the test ends. Every operator watches the whole cluster unless told ``namespace=...``, and two of
  them allocating on the same nodes is the very bug the tests look for: the shared operator is
  stopped first.
- ``operator`` (function): the shared operator, one per session (per xdist worker), in the test's
  binding mode; a test may ``kill()``, ``stop()`` or ``restart()`` it, and the next test gets a
  running one again. ``operator_process`` (session) is the :class:`SharedOperator` holding it.
- ``crd`` (session): the NeuronInference CRD, applied once and Established.

Binding modes: the ``binding`` fixture is the session's ``--binding``; a test (or module) marked
``@pytest.mark.both_bindings`` is parametrized over every mode instead (module scope, so a module's
tests run mode by mode and the shared operator switches mode once). Only tests whose behaviour
depends on the operator's default mode carry the mark (docs/development.md, "Tests").

The log of every operator a failed test used is attached to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from neuronplace.local.cluster import LocalCluster
from neuronplace.local.operator_process import BINDING_VARIABLE, TEST_TIMINGS, OperatorProcess, install_crd
from neuronplace.placement.names import BINDINGS, CRD_NAME

BOTH_BINDINGS = "both_bindings"
_STARTED_KEY = pytest.StashKey[list]()


def setting_args(settings: Mapping[str, object]) -> list[str]:
    """``neuronplace run`` flags for keyword settings: ``node_grace_seconds=5`` is
    ``--node-grace-seconds 5``, ``True`` a bare flag, ``None`` no flag at all."""
    args: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if value is False:
            raise ValueError(f"setting {name}=False: leave the flag out with None")
        args += [flag] if value is True else [flag, str(value)]
    return args


class OperatorFactory:
    """Makes operator processes on one cluster: default settings updated by the caller's, the
    binding mode in the environment, the log in the cluster's log folder."""

    def __init__(self, cluster: LocalCluster, defaults: Mapping[str, object]) -> None:
        self.cluster = cluster
        self.defaults = dict(defaults)
        self._made = 0

    def make(
        self,
        *args: str,
        binding: str,
        env: Mapping[str, str] | None = None,
        log_name: str | None = None,
        **settings: object,
    ) -> OperatorProcess:
        """An operator process, not started yet."""
        if binding not in BINDINGS:
            raise ValueError(f"binding {binding!r} is not one of {', '.join(BINDINGS)}")
        self._made += 1
        log = log_name or f"neuronplace-operator-{self._made}.log"
        return OperatorProcess(
            self.cluster,
            Path(self.cluster.logs_dir) / log,
            extra_args=(*setting_args({**self.defaults, **settings}), *args),
            env={BINDING_VARIABLE: binding, **(env or {})},
        )


class SharedOperator:
    """The operator the tests share on one cluster: at most one process runs, in the binding
    mode the current test asks for (switching mode stops the other one)."""

    def __init__(self, factory: OperatorFactory) -> None:
        self.factory = factory
        self.processes: dict[str, OperatorProcess] = {}

    def running(self, binding: str) -> OperatorProcess:
        for mode, process in self.processes.items():
            if mode != binding:
                process.stop()
        if binding not in self.processes:
            self.processes[binding] = self.factory.make(
                binding=binding, log_name=f"neuronplace-operator-{binding.lower()}.log"
            )
        process = self.processes[binding]
        if not process.alive():
            process.start()
        return process

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{BOTH_BINDINGS}: run the test once per binding mode (its behaviour depends on the mode)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "binding" in metafunc.fixturenames and metafunc.definition.get_closest_marker(BOTH_BINDINGS):
        metafunc.parametrize("binding", BINDINGS, scope="module")


@pytest.fixture(scope="session")
def crd(local_cluster: LocalCluster) -> str:
    """The NeuronInference CRD, applied once and Established."""
    install_crd(local_cluster)
    return CRD_NAME


@pytest.fixture(scope="session")
def operator_settings() -> dict[str, object]:
    return dict(TEST_TIMINGS)


@pytest.fixture(scope="session")
def operator_process(local_cluster, crd, operator_settings) -> Iterator[SharedOperator]:
    shared = SharedOperator(OperatorFactory(local_cluster, operator_settings))
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture
def operator(operator_process: SharedOperator, binding: str, request) -> OperatorProcess:
    """A running operator in the test's binding mode (restarted if an earlier test killed or stopped it)."""
    process = operator_process.running(binding)
    request.node.stash.setdefault(_STARTED_KEY, []).append(process)
    return process


@pytest.fixture
def operator_factory(
    operator_process: SharedOperator, binding: str, request
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = request.node.stash.setdefault(_STARTED_KEY, [])
    ours: list[OperatorProcess] = []

    def make_operator(*args: str, binding: str = binding, start: bool = True, **options) -> OperatorProcess:
        operator_process.stop()
        process = operator_process.factory.make(*args, binding=binding, **options)
        started.append(process)
        ours.append(process)
        if start:
            process.start()
        return process

    try:
        yield make_operator
    finally:
        for process in ours:
            process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in item.stash.get(_STARTED_KEY, []):
            report.sections.append((f"operator log ({process.log_path.name})", process.log_tail()))
