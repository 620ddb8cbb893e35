"""What a PromQL expression reads: every series selector (metric name and label matchers) and every
grouping label (``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` lists).

Enough of PromQL for the chart's dashboard and alerts: strings, range/offset durations and numbers
are skipped; an identifier followed by ``(`` is a function or aggregation; any other identifier
that is not a keyword is a metric name. Grafana's variables are replaced first (``$__rate_interval``
by a duration, any other ``$name`` by ``.*``). Anything it cannot read raises ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<range>\[[^\]]*\])
    |(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    )""",
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # label names its matchers use


def _tokens(expression: str) -> list[tuple[str, str]]:
    text = re.sub(r"\$__rate_interval\b|\$__interval\b|\$__range\b", "5m", expression)
    text = re.sub(r"\$\{?\w+\}?", ".*", text)
    tokens, position = [], 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read PromQL at {text[position:]!r} in {expression!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def parse(expression: str) -> tuple[list[Selector], set[str]]:
    """The selectors and the grouping labels of ``expression``."""
    tokens = _tokens(expression)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    index = 0

    def following(offset: int = 1) -> tuple[str, str] | None:
        return tokens[index + offset] if index + offset < len(tokens) else None

    while index < len(tokens):
        kind, text = tokens[index]
        if kind == "ident" and text in _GROUPING:
            if following() == ("op", "("):
                index += 2
                while tokens[index] != ("op", ")"):
                    if tokens[index][0] == "ident":
                        grouping.add(tokens[index][1])
                    index += 1
        elif kind == "ident" and (following() == ("op", "(") or following() in (("ident", "by"), ("ident", "without"))):
            pass  # a function, or an aggregation (``sum by (x) (...)``)
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            labels: set[str] = set()
            if following() == ("op", "{"):
                index += 2
                while tokens[index] != ("op", "}"):
                    name, operator, value = tokens[index], tokens[index + 1], tokens[index + 2]
                    if name[0] != "ident" or operator[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
                        raise ValueError(f"cannot read the matcher at {tokens[index : index + 3]} in {expression!r}")
                    labels.add(name[1])
                    index += 3
                    if tokens[index] == ("op", ","):
                        index += 1
            selectors.append(Selector(text, frozenset(labels)))
        elif (kind, text) == ("op", "{"):
            raise ValueError(f"a selector without a metric name in {expression!r}")
        index += 1
    return selectors, grouping
