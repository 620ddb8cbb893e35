"""Label selectors in the string form ``kubectl -l`` takes (``pool=a,neuron,!gpu``). Pure.

The operator's ``node_selector`` setting (which nodes it manages) uses this form; the tests'
invariant checker reads the same setting.
"""

from __future__ import annotations

from collections.abc import Mapping


def parse_node_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """Parse an equality-based label selector into ``(op, key, value)`` terms.

    ``op`` is ``=`` (key=value), ``!=`` (key!=value), ``exists`` (key) or ``!exists`` (!key).
    """
    terms: list[tuple[str, str, str | None]] = []
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("!exists", term[1:].strip(), None))
        else:
            terms.append(("exists", term, None))
    for _op, key, _ in terms:
        if not key or " " in key:
            raise ValueError(f"node selector {selector!r}: bad term with key {key!r}; expected k=v, k!=v, k or !k")
    return terms


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy the selector (an empty selector matches everything)."""
    for op, key, value in parse_node_selector(selector):
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True
