"""Pod-template safety policy: what a NeuronInference's template may ask the operator to create.

The operator creates pods with its own ServiceAccount, so anyone allowed to create a
NeuronInference could otherwise borrow the operator's power to make pods that they could not make
themselves (privileged containers, host namespaces, host paths...). Before building pods, the
operator calls ``check_template``; a non-empty result means the resource is invalid (no pods, a
condition listing the violations).

The rules follow the Kubernetes Pod Security Standards "baseline" profile
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), plus two fields that
baseline leaves alone but that make root in a container much closer to root on the node:
``allowPrivilegeEscalation: true`` and an explicit ``runAsUser: 0``. When the chart sets
``allowPrivileged`` (env ``NEURONPLACE_ALLOW_PRIVILEGED=true``) every one of these checks is lifted.
The namespace rule is never lifted: a resource in namespace A only ever produces pods in A.

Pure: takes plain dicts (the API's camelCase JSON), never imports kopf or a Kubernetes client, and
never raises on malformed input (a wrong type is reported as a violation instead).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Capabilities a baseline pod may add: the container runtime's default set.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)

# Namespaced sysctls that cannot affect other pods on the node (baseline's "safe" set).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)

# SELinux types a baseline pod may run as; user and role may not be set at all.
SAFE_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
PRIVILEGED_HINT = "the operator refuses privileged pod templates unless the chart sets allowPrivileged"


def check_template(template: Any, allow_privileged: bool = False, *, namespace: str | None = None) -> list[str]:
    """Return the template's policy violations, one human-readable line each; empty means allowed.

    ``template`` is a PodTemplateSpec (``{"metadata": ..., "spec": ...}``) as JSON-like dicts.
    ``namespace`` is the NeuronInference's namespace: a template that names another one is refused,
    whatever ``allow_privileged`` says.
    """
    if not isinstance(template, Mapping):
        return [f"template: expected an object (PodTemplateSpec), got {type(template).__name__}"]
    violations: list[str] = []
    metadata = template.get("metadata") or {}
    spec = template.get("spec") or {}
    if not isinstance(metadata, Mapping):
        violations.append(f"template.metadata: expected an object, got {type(metadata).__name__}")
        metadata = {}
    if not isinstance(spec, Mapping):
        return [*violations, f"template.spec: expected an object (PodSpec), got {type(spec).__name__}"]

    violations += _namespace_violations(metadata, namespace)
    if not allow_privileged:
        violations += _pod_violations(metadata, spec)
        for path, container in _containers(spec):
            violations += _container_violations(path, container)
    return violations


def _namespace_violations(metadata: Mapping, namespace: str | None) -> list[str]:
    requested = metadata.get("namespace")
    if requested in (None, "") or namespace is None or requested == namespace:
        return []
    return [
        f"template.metadata.namespace: {requested!r} differs from the resource's namespace {namespace!r}; "
        "pods are only ever created in the resource's own namespace"
    ]


def _pod_violations(metadata: Mapping, spec: Mapping) -> list[str]:
    violations = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field) is True:
            violations.append(f"template.spec.{field}: true shares the node's namespace; {PRIVILEGED_HINT}")

    for index, volume in enumerate(_list(spec.get("volumes"))):
        if isinstance(volume, Mapping) and "hostPath" in volume:
            name = volume.get("name", index)
            violations.append(
                f"template.spec.volumes[{index}] ({name}): hostPath volumes expose the node's filesystem; {PRIVILEGED_HINT}"
            )

    pod_context = spec.get("securityContext") or {}
    if isinstance(pod_context, Mapping):
        violations += _security_context_violations("template.spec.securityContext", pod_context)
        for index, sysctl in enumerate(_list(pod_context.get("sysctls"))):
            name = sysctl.get("name") if isinstance(sysctl, Mapping) else sysctl
            if name not in SAFE_SYSCTLS:
                violations.append(
                    f"template.spec.securityContext.sysctls[{index}]: {name!r} is not a safe namespaced sysctl "
                    f"(allowed: {', '.join(sorted(SAFE_SYSCTLS))})"
                )

    annotations = metadata.get("annotations") or {}
    if isinstance(annotations, Mapping):
        for key, value in annotations.items():
            if str(key).startswith(APPARMOR_ANNOTATION_PREFIX) and value == "unconfined":
                violations.append(f"template.metadata.annotations[{key}]: AppArmor 'unconfined'; {PRIVILEGED_HINT}")
    return violations


def _container_violations(path: str, container: Mapping) -> list[str]:
    violations = []
    for index, port in enumerate(_list(container.get("ports"))):
        if isinstance(port, Mapping) and port.get("hostPort") not in (None, 0):
            violations.append(
                f"{path}.ports[{index}].hostPort: {port['hostPort']} binds a port on the node; {PRIVILEGED_HINT}"
            )

    context = container.get("securityContext") or {}
    if not isinstance(context, Mapping):
        return [*violations, f"{path}.securityContext: expected an object, got {type(context).__name__}"]
    where = f"{path}.securityContext"
    if context.get("privileged") is True:
        violations.append(
            f"{where}.privileged: true gives the container every device and capability; {PRIVILEGED_HINT}"
        )
    if context.get("allowPrivilegeEscalation") is True:
        violations.append(
            f"{where}.allowPrivilegeEscalation: true lets processes gain more privileges (setuid); {PRIVILEGED_HINT}"
        )
    if context.get("procMount") not in (None, "Default"):
        violations.append(f"{where}.procMount: {context['procMount']!r} unmasks /proc; only 'Default' is allowed")
    capabilities = context.get("capabilities") or {}
    if isinstance(capabilities, Mapping):
        extra = sorted(
            str(c) for c in _list(capabilities.get("add")) if str(c).removeprefix("CAP_") not in BASELINE_CAPABILITIES
        )
        if extra:
            violations.append(
                f"{where}.capabilities.add: {', '.join(extra)} beyond the baseline set "
                f"({', '.join(sorted(BASELINE_CAPABILITIES))}); {PRIVILEGED_HINT}"
            )
    return violations + _security_context_violations(where, context)


def _security_context_violations(where: str, context: Mapping) -> list[str]:
    """Rules shared by the pod-level and the container-level securityContext."""
    violations = []
    if context.get("runAsUser") == 0:
        violations.append(f"{where}.runAsUser: 0 asks for root explicitly; {PRIVILEGED_HINT}")
    windows = context.get("windowsOptions") or {}
    if isinstance(windows, Mapping) and windows.get("hostProcess") is True:
        violations.append(f"{where}.windowsOptions.hostProcess: true runs on the host; {PRIVILEGED_HINT}")
    seccomp = context.get("seccompProfile") or {}
    if isinstance(seccomp, Mapping) and seccomp.get("type") == "Unconfined":
        violations.append(f"{where}.seccompProfile.type: 'Unconfined' disables syscall filtering; {PRIVILEGED_HINT}")
    apparmor = context.get("appArmorProfile") or {}
    if isinstance(apparmor, Mapping) and apparmor.get("type") == "Unconfined":
        violations.append(f"{where}.appArmorProfile.type: 'Unconfined'; {PRIVILEGED_HINT}")
    selinux = context.get("seLinuxOptions") or {}
    if isinstance(selinux, Mapping):
        if selinux.get("type", "") not in SAFE_SELINUX_TYPES:
            violations.append(
                f"{where}.seLinuxOptions.type: {selinux['type']!r} is not a container type; {PRIVILEGED_HINT}"
            )
        for field in ("user", "role"):
            if selinux.get(field):
                violations.append(f"{where}.seLinuxOptions.{field}: may not be set; {PRIVILEGED_HINT}")
    return violations


def _containers(spec: Mapping) -> Iterator[tuple[str, Mapping]]:
    for kind in CONTAINER_LISTS:
        for index, container in enumerate(_list(spec.get(kind))):
            if isinstance(container, Mapping):
                yield f"template.spec.{kind}[{index}]", container


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []
