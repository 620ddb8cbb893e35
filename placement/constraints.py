"""Which nodes a request may use, by Kubernetes' own rules: taints and tolerations, and required
node affinity (``nodeSelectorTerms`` with ``matchExpressions`` and ``matchFields``). Pure.

The semantics are kube-scheduler's, so that a replica the allocator puts on a node is one the
scheduler and the kubelet would accept there too: only NoSchedule and NoExecute taints keep pods
off (PreferNoSchedule is a preference); an empty toleration key with ``Exists`` tolerates every
taint; terms are ORed, expressions inside a term ANDed. Malformed tolerations and selector
expressions raise ``ValueError`` naming the entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from neuronplace.placement.inventory import NodeInventory

_TAINT_EFFECTS_ENFORCED = ("NoSchedule", "NoExecute")
_TOLERATION_OPERATORS = ("", "Equal", "Exists")
_TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")


def validate_toleration(toleration) -> None:
    if not isinstance(toleration, Mapping):
        raise ValueError(f"a toleration must be a mapping, got {toleration!r}")
    operator = toleration.get("operator") or ""
    effect = toleration.get("effect") or ""
    key = toleration.get("key") or ""
    if operator not in _TOLERATION_OPERATORS:
        raise ValueError(f"toleration {dict(toleration)!r}: operator must be Equal or Exists")
    if effect not in _TOLERATION_EFFECTS:
        raise ValueError(f"toleration {dict(toleration)!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
    if operator == "Exists" and toleration.get("value"):
        raise ValueError(f"toleration {dict(toleration)!r}: value must be empty when operator is Exists")
    if not key and operator != "Exists":
        raise ValueError(f"toleration {dict(toleration)!r}: operator must be Exists when key is empty")


def tolerates(toleration: Mapping, taint: Mapping) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint``."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def taints_tolerated(taints: Sequence[Mapping], tolerations: Sequence[Mapping]) -> bool:
    return all(
        taint.get("effect") not in _TAINT_EFFECTS_ENFORCED or any(tolerates(t, taint) for t in tolerations)
        for taint in taints
    )


def required_terms(affinity) -> list | None:
    """The required node selector terms, validated; ``None`` when there is no requirement."""
    if affinity is None:
        return None
    if not isinstance(affinity, Mapping):
        raise ValueError(f"affinity must be a mapping, got {affinity!r}")
    required = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return None
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list):
        raise ValueError(f"required node affinity needs a list nodeSelectorTerms, got {required!r}")
    for term in terms:
        if not isinstance(term, Mapping):
            raise ValueError(f"node selector term must be a mapping, got {term!r}")
        for kind in ("matchExpressions", "matchFields"):
            for expression in term.get(kind) or ():
                _validate_expression(expression, kind)
    return terms


def _validate_expression(expression, kind: str) -> None:
    if not isinstance(expression, Mapping) or not expression.get("key"):
        raise ValueError(f"{kind} entry needs a key, got {expression!r}")
    operator = expression.get("operator")
    values = expression.get("values") or []
    if operator not in _SELECTOR_OPERATORS:
        raise ValueError(f"{kind} {dict(expression)!r}: operator must be one of {', '.join(_SELECTOR_OPERATORS)}")
    if kind == "matchFields" and (expression["key"] != "metadata.name" or operator not in ("In", "NotIn")):
        raise ValueError(f"matchFields {dict(expression)!r}: only metadata.name with In or NotIn is supported")
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"{kind} {dict(expression)!r}: {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"{kind} {dict(expression)!r}: {operator} takes no values")
    if operator in ("Gt", "Lt"):
        if len(values) != 1:
            raise ValueError(f"{kind} {dict(expression)!r}: {operator} needs exactly one value")
        try:
            int(values[0])
        except (TypeError, ValueError):
            raise ValueError(f"{kind} {dict(expression)!r}: {operator} needs an integer value") from None


def _expression_matches(expression: Mapping, labels: Mapping[str, str]) -> bool:
    key = expression["key"]
    operator = expression["operator"]
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if not present:
        return False
    try:
        actual = int(labels[key])
    except ValueError:
        return False
    return actual > int(values[0]) if operator == "Gt" else actual < int(values[0])


def affinity_matches(terms: list | None, node: NodeInventory) -> bool:
    """Terms are ORed, expressions inside a term ANDed; an empty term matches nothing."""
    if terms is None:
        return True
    fields = {"metadata.name": node.name}
    for term in terms:
        expressions = term.get("matchExpressions") or ()
        field_expressions = term.get("matchFields") or ()
        if not expressions and not field_expressions:
            continue
        if all(_expression_matches(e, node.labels) for e in expressions) and all(
            _expression_matches(e, fields) for e in field_expressions
        ):
            return True
    return False
