"""Pod-template safety policy: what a NeuronInference's template may ask the operator to create.

Over 300 lines because it is one policy: the Pod Security Standards' checks, each a few lines, in one place.

The operator creates pods with its own ServiceAccount, so anyone allowed to create a
NeuronInference could otherwise borrow the operator's power to make pods that they could not make
themselves (privileged containers, host namespaces, host paths...). Before building pods, the
operator calls ``check_template``; a non-empty result means the inference is invalid (no pods, a
condition listing the violations).

Two levels (:class:`TemplatePolicy`, operator setting ``pod_security``):

- ``baseline`` (default): the Kubernetes Pod Security Standards "baseline" profile
  (https://kubernetes.io/docs/concepts/security/pod-security-standards/), plus two fields that
  baseline leaves alone but that make root in a container much closer to root on the node
  (``allowPrivilegeEscalation: true`` and an explicit ``runAsUser: 0``), plus the volume types in
  :data:`NODE_VOLUME_TYPES`, which make the kubelet act for the pod on the node itself (mount from
  the node's network with the node's identity, run git or a driver binary as root) or create objects
  that pod-create permission does not grant. A setting (``allow_volume_types``) lets named ones through.
- ``restricted``: baseline plus the "restricted" profile: only the volume types in
  :data:`RESTRICTED_VOLUME_TYPES`, ``allowPrivilegeEscalation: false`` on every container,
  ``runAsNonRoot: true``, a ``RuntimeDefault`` or ``Localhost`` seccomp profile, and capabilities
  that drop ``ALL`` and add nothing but ``NET_BIND_SERVICE``.

Every refusal names the field and the rule. When the chart sets ``allowPrivileged`` (env
``NEURONPLACE_ALLOW_PRIVILEGED=true``) every check of either level is lifted. The namespace rule is
never lifted: an inference in namespace A only ever produces pods in A.

Pure: takes plain dicts (the API's camelCase JSON), never imports kopf or a Kubernetes client, and
never raises on malformed input (a wrong type is reported as a violation instead).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from neuronplace.placement.names import POD_SECURITY_LEVELS

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

# Volume types baseline Pod Security admits but this policy refuses at every level unless a setting
# allows them by name, each with the reason a user reads in the refusal.
NODE_VOLUME_TYPES = {
    "gitRepo": "the kubelet runs git on the node, as root, to fill it (deprecated; clone in an init container)",
    "nfs": "the kubelet mounts it from the node's network with the node's identity",
    "iscsi": "the kubelet logs in to the target from the node's network with the node's initiator",
    "rbd": "the kubelet maps the Ceph image from the node's network with the node's keyring access",
    "cephfs": "the kubelet mounts it from the node's network with the node's identity",
    "glusterfs": "the kubelet mounts it from the node's network with the node's identity",
    "flexVolume": "the kubelet runs a driver binary on the node, as root",
    "ephemeral": "the controller-manager creates a PersistentVolumeClaim for it, which permission to create "
    "pods does not grant",
}

# The only volume types the restricted profile admits.
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# The one capability a restricted container may add (after dropping ALL).
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
RESTRICTED_SECCOMP_TYPES = ("RuntimeDefault", "Localhost")

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
PRIVILEGED_HINT = "the operator refuses privileged pod templates unless the chart sets allowPrivileged"
RESTRICTED_HINT = "required by the restricted pod-security level, NEURONPLACE_POD_SECURITY=restricted"


@dataclass(frozen=True)
class TemplatePolicy:
    """Which pod templates the operator builds pods from (see the module docstring).

    level: ``baseline`` or ``restricted``.
    allow_privileged: lift every check but the namespace rule.
    allowed_volume_types: names from :data:`NODE_VOLUME_TYPES` to admit anyway.
    """

    level: str = "baseline"
    allow_privileged: bool = False
    allowed_volume_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.level not in POD_SECURITY_LEVELS:
            raise ValueError(f"pod security level {self.level!r} is not one of {', '.join(POD_SECURITY_LEVELS)}")
        unknown = sorted(set(self.allowed_volume_types) - set(NODE_VOLUME_TYPES))
        if unknown:
            raise ValueError(
                f"volume type(s) {', '.join(unknown)} cannot be allowed: only {', '.join(sorted(NODE_VOLUME_TYPES))} "
                "are refused by default"
            )


BASELINE = TemplatePolicy()


def check_template(template: Any, policy: TemplatePolicy = BASELINE, *, namespace: str | None = None) -> list[str]:
    """Return the template's policy violations, one human-readable line each; empty means allowed.

    ``template`` is a PodTemplateSpec (``{"metadata": ..., "spec": ...}``) as JSON-like dicts.
    ``namespace`` is the NeuronInference's namespace: a template that names another one is refused,
    whatever the policy says.
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
    if policy.allow_privileged:
        return violations
    violations += _pod_violations(metadata, spec)
    violations += _volume_violations(spec, policy)
    for path, container in _containers(spec):
        violations += _container_violations(path, container)
    if policy.level == "restricted":
        violations += _restricted_violations(spec)
    return violations


def _volume_violations(spec: Mapping, policy: TemplatePolicy) -> list[str]:
    violations = []
    for index, volume in enumerate(_list(spec.get("volumes"))):
        if not isinstance(volume, Mapping):
            continue
        name = volume.get("name", index)
        kinds = [key for key in volume if key != "name"]
        for kind in kinds:
            if kind in NODE_VOLUME_TYPES and kind not in policy.allowed_volume_types:
                violations.append(
                    f"template.spec.volumes[{index}] ({name}): {kind} volumes are refused: {NODE_VOLUME_TYPES[kind]} "
                    f"(allow them with NEURONPLACE_ALLOW_VOLUME_TYPES={kind})"
                )
            elif policy.level == "restricted" and kind not in RESTRICTED_VOLUME_TYPES and kind != "hostPath":
                violations.append(
                    f"template.spec.volumes[{index}] ({name}): {kind} volumes are not allowed; the restricted level "
                    f"admits only {', '.join(sorted(RESTRICTED_VOLUME_TYPES))} ({RESTRICTED_HINT})"
                )
    return violations


def _restricted_violations(spec: Mapping) -> list[str]:
    """The restricted profile's rules on top of baseline: escalation, non-root, seccomp, capabilities."""
    violations = []
    pod_context = _mapping(spec.get("securityContext"))
    pod_seccomp = _mapping(pod_context.get("seccompProfile")).get("type") in RESTRICTED_SECCOMP_TYPES
    if pod_context.get("runAsNonRoot") is False:
        violations.append(f"template.spec.securityContext.runAsNonRoot: must not be false ({RESTRICTED_HINT})")
    for path, container in _containers(spec):
        context = container.get("securityContext") or {}
        if not isinstance(context, Mapping):
            continue  # reported by the baseline checks
        where = f"{path}.securityContext"
        if context.get("allowPrivilegeEscalation") is not False:
            violations.append(f"{where}.allowPrivilegeEscalation: must be set to false ({RESTRICTED_HINT})")
        non_root = context.get("runAsNonRoot")
        # An explicit false at pod level is reported once, above, not again for every container.
        if non_root is False or (non_root is None and pod_context.get("runAsNonRoot") is None):
            violations.append(
                f"{where}.runAsNonRoot: must be true here or in template.spec.securityContext ({RESTRICTED_HINT})"
            )
        seccomp = _mapping(context.get("seccompProfile")).get("type")
        if seccomp is not None and seccomp not in RESTRICTED_SECCOMP_TYPES:
            violations.append(
                f"{where}.seccompProfile.type: {seccomp!r} must be one of {', '.join(RESTRICTED_SECCOMP_TYPES)} "
                f"({RESTRICTED_HINT})"
            )
        elif seccomp is None and not pod_seccomp:
            violations.append(
                f"{where}.seccompProfile.type: must be RuntimeDefault or Localhost here or in "
                f"template.spec.securityContext ({RESTRICTED_HINT})"
            )
        capabilities = _mapping(context.get("capabilities"))
        if "ALL" not in [str(c) for c in _list(capabilities.get("drop"))]:
            violations.append(f"{where}.capabilities.drop: must include ALL ({RESTRICTED_HINT})")
        # Capabilities beyond the baseline set are already refused above, with baseline's message.
        added = sorted(
            str(c)
            for c in _list(capabilities.get("add"))
            if str(c) in BASELINE_CAPABILITIES - RESTRICTED_ADDABLE_CAPABILITIES
        )
        if added:
            violations.append(
                f"{where}.capabilities.add: {', '.join(added)} not allowed; only NET_BIND_SERVICE may be added "
                f"({RESTRICTED_HINT})"
            )
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
        # Names are compared exactly, as Pod Security admission compares them: "CAP_CHOWN" is not
        # "CHOWN" there, and a pod we built with it would be refused in an enforcing namespace.
        extra = sorted(str(c) for c in _list(capabilities.get("add")) if str(c) not in BASELINE_CAPABILITIES)
        if extra:
            violations.append(
                f"{where}.capabilities.add: {', '.join(extra)} beyond the baseline set "
                f"({', '.join(sorted(BASELINE_CAPABILITIES))}, written without CAP_); {PRIVILEGED_HINT}"
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


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []
