"""Reading a Prometheus text exposition (the API server's or the operator's ``/metrics``). Pure,
except :func:`scrape`."""

from __future__ import annotations

import re
import urllib.request

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus text exposition whose labels match ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def scrape(url: str, name: str, timeout: float = 10, **labels: str) -> float | None:
    """:func:`metric_sum` of what ``url`` serves; None when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return metric_sum(response.read().decode(), name, **labels)
    except OSError:
        return None
