"""pytest fixtures on the local control plane (registered by ``tests/conftest.py``).

- ``local_cluster`` (session): ONE real cluster per test session (per xdist worker), named ``np-test-<pid>``; builds
  missing binaries first. Torn down at the end in every case (failure, Ctrl-C, SIGTERM, interpreter
  exit), and the teardown asserts that no component process and no listening port is left.
- ``namespace`` (function): a fresh namespace, deleted afterwards.
- ``fleet`` (function): a factory, ``fleet({"inf2.48xlarge": 2})`` or ``fleet("trn1.32xlarge=1")``
  (``fleet("trn2.48xlarge=1:dra")``: a node managed by the simulated Neuron DRA driver), that
  creates kwok nodes labelled ``neuronplace.io/pool=<pool unique to the test>``, waits until they
  are Ready, and returns a :class:`Fleet` (a list of the node names, with ``.nodes`` and
  ``.pool``); ``fleet.pool`` gives the same pool. Every node of the pool is deleted afterwards.

- ``autoscaler`` (module): a cluster of its own (``np-test-<pid>-autoscaled``) with no node at all
  and Karpenter running (:class:`neuronplace.local.autoscaler.Autoscaler`, default NodePool of the
  Neuron instance types); ``autoscaled_cluster`` is its :class:`LocalCluster`. A cluster of its own,
  because Karpenter would add nodes for any Pending pod of the session's other tests. Torn down and
  checked like ``local_cluster``.
- ``strict_cluster`` (module): a cluster of its own (``np-test-<pid>-strict``) configured as
  production clusters often are: the ``OwnerReferencesPermissionEnforcement`` admission plugin on,
  and kube-controller-manager's controllers acting as their own ServiceAccounts (so the garbage
  collector is ``system:serviceaccount:kube-system:generic-garbage-collector``). Torn down and
  checked like ``local_cluster``.

When a test that used the cluster fails, the tail of every component's log is attached to its
report (shown under "control plane logs").

``--binding Scheduler|Direct`` (default: ``NEURONPLACE_BINDING``, else Scheduler) is the session's
binding mode: the ``binding`` fixture (session) and the report header say which, and it is exported
as ``NEURONPLACE_BINDING`` to this process's environment, the one every child (a ``neuronplace``
command a test runs) inherits. Tests marked ``both_bindings`` run in both modes whatever it says
(``neuronplace.local.pytest_operator``, which starts every operator in the test's mode).

Under pytest-xdist each worker is a session of its own: its own ``np-test-<pid>`` cluster, which
the orphan clean-up of a sibling leaves alone (the pid in the name is alive).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest

from neuronplace.local import procs
from neuronplace.local.autoscaler import Autoscaler
from neuronplace.local.cluster import ClusterSettings, LocalCluster, list_clusters, port_lock
from neuronplace.local.fleet import POOL_LABEL, FleetSpec
from neuronplace.local.operator_process import BINDING_VARIABLE
from neuronplace.placement.names import BINDING_SCHEDULER, BINDINGS

_CLUSTER_KEY = pytest.StashKey["LocalCluster"]()
_AUTOSCALED_KEY = pytest.StashKey["LocalCluster"]()
_STRICT_KEY = pytest.StashKey["LocalCluster"]()
STRICT_SETTINGS = ClusterSettings(
    admission_plugins=("OwnerReferencesPermissionEnforcement",), controller_credentials=True
)
_BINDING_KEY = pytest.StashKey[str]()
_TEST_CLUSTER = re.compile(r"^np-test-(\d+)(?:-autoscaled|-strict)?$")


class Fleet(list):
    """The node names a ``fleet(...)`` call created (a list), plus the pool label value."""

    def __init__(self, nodes: list[str], pool: str) -> None:
        super().__init__(nodes)
        self.pool = pool

    @property
    def nodes(self) -> list[str]:
        return list(self)

    @property
    def selector(self) -> dict[str, str]:
        """The nodeSelector that targets exactly this test's nodes."""
        return {POOL_LABEL: self.pool}


class FleetFactory:
    """Creates nodes for one test, all in the same pool, and deletes them afterwards."""

    def __init__(self, cluster: LocalCluster, pool: str) -> None:
        self.cluster = cluster
        self.pool = pool
        self._calls = 0

    def __call__(self, fleet: FleetSpec, labels: Mapping[str, str] | None = None, timeout: float = 120) -> Fleet:
        prefix = f"{self.pool}-{self._calls}-" if self._calls else f"{self.pool}-"
        self._calls += 1
        names = self.cluster.create_nodes(
            fleet, labels={**(labels or {}), POOL_LABEL: self.pool}, prefix=prefix, timeout=timeout
        )
        return Fleet(names, self.pool)

    def cleanup(self) -> None:
        if self._calls:
            self.cluster.kubectl(
                "delete", "nodes", "-l", f"{POOL_LABEL}={self.pool}", "--wait=true", "--timeout=60s", check=False
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--binding",
        choices=BINDINGS,
        default=None,
        help=f"how the operators this session starts bind replica pods (exported as {BINDING_VARIABLE}; "
        f"default: {BINDING_VARIABLE} if set, else {BINDING_SCHEDULER})",
    )


def pytest_configure(config: pytest.Config) -> None:
    binding = config.getoption("--binding") or os.environ.get(BINDING_VARIABLE) or BINDING_SCHEDULER
    if binding not in BINDINGS:
        raise pytest.UsageError(f"{BINDING_VARIABLE}={binding!r} is not one of {', '.join(BINDINGS)}")
    os.environ[BINDING_VARIABLE] = binding
    config.stash[_BINDING_KEY] = binding


def pytest_report_header(config: pytest.Config) -> str:
    return f"neuronplace binding mode: {config.stash[_BINDING_KEY]} ({BINDING_VARIABLE} for every operator started)"


@pytest.fixture(scope="session")
def binding(request: pytest.FixtureRequest) -> str:
    """The binding mode of this session's operators (``--binding``)."""
    return request.config.stash[_BINDING_KEY]


def _remove_orphaned_test_clusters() -> None:
    """Remove clusters left by test sessions that were killed outright (their pid is gone)."""

    for cluster in list_clusters():
        match = _TEST_CLUSTER.match(cluster.name)
        if match and int(match.group(1)) != os.getpid() and not procs.is_alive(int(match.group(1))):
            cluster.down()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _test_cluster(
    request: pytest.FixtureRequest, key: pytest.StashKey, name: str, settings: ClusterSettings | None = None
) -> Iterator[LocalCluster]:
    """A cluster of this test session, up while the block runs (its logs attached to failed tests'
    reports through ``key``), then torn down; the teardown asserts that no component process and no
    listening port of it is left."""
    _remove_orphaned_test_clusters()
    cluster = LocalCluster(name) if settings is None else LocalCluster(name, settings=settings)
    atexit.register(cluster.down)  # any path that skips the fixture's teardown
    try:
        cluster.up(progress=_progress(request))
        request.config.stash[key] = cluster
        yield cluster
    finally:
        left, ours = _down_and_check(cluster)
        if key in request.config.stash:
            del request.config.stash[key]
    assert not left, f"components still running after teardown: {left}"
    assert not ours, f"ports still listening after teardown: {ours}"


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    # SIGTERM/SIGHUP would end the interpreter without running finalizers; turn them into the
    # same unwinding as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_keyboard_interrupt)
    with _test_cluster(request, _CLUSTER_KEY, f"np-test-{os.getpid()}") as cluster:
        yield cluster


def _progress(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a line live even under output capture: a cold build takes minutes."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")

    def progress(line: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"[local control plane] {line}")

    return progress


def _down_and_check(cluster: LocalCluster) -> tuple[dict[str, int], dict[int, list]]:
    """Remove the cluster; return the processes and listening ports of it that outlived that."""
    # Under the port lock no other cluster can be created (and take our freed ports) between
    # the teardown and the check that nothing of ours still listens.
    with port_lock():
        # The ports it came up with, and those of processes started since (the autoscaler).
        ports, components = cluster.ports | cluster.listening_ports(), cluster.running_components()
        cluster.down()
        left = {name: pid for name, pid in components.items() if procs.is_alive(pid)}
        ours = _our_listeners(cluster, ports)
    atexit.unregister(cluster.down)
    return left, ours


@pytest.fixture(scope="module")
def autoscaler(request: pytest.FixtureRequest) -> Iterator[Autoscaler]:
    with _test_cluster(request, _AUTOSCALED_KEY, f"np-test-{os.getpid()}-autoscaled") as cluster:
        autoscaler = Autoscaler(cluster)
        autoscaler.start(progress=_progress(request))
        yield autoscaler


@pytest.fixture(scope="module")
def autoscaled_cluster(autoscaler: Autoscaler) -> LocalCluster:
    return autoscaler.cluster


@pytest.fixture(scope="module")
def strict_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with _test_cluster(request, _STRICT_KEY, f"np-test-{os.getpid()}-strict", STRICT_SETTINGS) as cluster:
        yield cluster


def _our_listeners(cluster: LocalCluster, ports: set[int], settle: float = 15) -> dict[int, list]:
    """Ports of ``cluster`` still listening, with their owners, after giving closing sockets
    ``settle`` seconds. A port held by a process that is not this cluster's (another session's
    cluster on a shared machine took it the moment it was freed) is not a leak of ours."""
    deadline = time.monotonic() + settle
    while True:
        owners = procs.port_owners(ports & procs.listening_ports())
        ours = {
            port: held
            for port, held in owners.items()
            if not held or any(cluster.name in command for _, command in held)
        }
        if not ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.25)


@contextlib.contextmanager
def fresh_namespace(cluster: LocalCluster, base: str) -> Iterator[str]:
    """A new namespace named after ``base`` (made DNS-safe, a random suffix), ready for pods; deleted
    (without waiting) afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40].strip("-")
    name = f"{base or 'test'}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until kube-controller-manager has created the namespace's default ServiceAccount.
    cluster.kubectl("-n", name, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(local_cluster, request.node.name) as name:
        yield name


@pytest.fixture
def fleet(local_cluster: LocalCluster) -> Iterator[FleetFactory]:
    factory = FleetFactory(local_cluster, f"p-{uuid.uuid4().hex[:8]}")
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    fixtures = getattr(item, "fixturenames", ())
    for fixture, key in (
        ("local_cluster", _CLUSTER_KEY),
        ("autoscaler", _AUTOSCALED_KEY),
        ("strict_cluster", _STRICT_KEY),
    ):
        cluster = item.config.stash.get(key, None) if report.failed and fixture in fixtures else None
        if cluster is not None:
            report.sections.append((f"control plane logs ({cluster.name})", cluster.log_tail()))
