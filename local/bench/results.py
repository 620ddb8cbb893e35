"""The figures of a benchmark phase and how they are reported: percentiles, per-group latencies,
the names of the sides and the order they run in each round, the per-phase table, the medians and
spread over rounds, the median round and the plot of pods bound over time. Pure, except
:func:`plot` (writes a PNG with matplotlib, imported only there)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neuronplace.placement.names import BINDING_DIRECT, BINDING_SCHEDULER


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def group_latencies(
    created: Mapping[str, float], bound: Mapping[str, float], members: Mapping[str, Iterable[str]]
) -> dict[str, float]:
    """Seconds from each group's creation until its last pod was bound."""
    result = {}
    for group, start in created.items():
        pods = list(members.get(group, ()))
        missing = [pod for pod in pods if pod not in bound]
        if not pods or missing:
            raise ValueError(f"group {group}: pods never bound: {missing or 'no pods at all'}")
        result[group] = max(bound[pod] for pod in pods) - start
    return result


def bound_curve(bound_times: Iterable[float], start: float) -> tuple[list[float], list[int]]:
    """(seconds since ``start``, pods bound so far): a step curve for the plot."""
    times = sorted(t - start for t in bound_times)
    return times, list(range(1, len(times) + 1))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


@dataclass
class PhaseResult:
    """One side of a round: when each pod was bound and Running, per-group latencies, requests."""

    label: str
    pods: int
    start: float
    bound: dict[str, float]
    running: dict[str, float]
    latencies: dict[str, float]
    created_seconds: float  # the last create call of the phase returned this long after the first was issued
    requests_all: float
    requests_operator: float | None = None
    operator_cpu_s: float | None = None
    operator_peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def bound_seconds(self) -> float:
        return max(self.bound.values()) - self.start

    @property
    def pods_per_second(self) -> float:
        return self.pods / self.bound_seconds

    @property
    def all_running_seconds(self) -> float:
        return max(self.running.values()) - self.start


# The sides of a scale round, named for what each measures: the operator in each binding mode, and
# kube-scheduler behind kube-controller-manager or alone.
OURS_SCHEDULER = "ours: Scheduler mode (operator pins, kube-scheduler binds)"
OURS_DIRECT = "ours: Direct mode (operator binds)"
OURS_SIDES = {BINDING_SCHEDULER: OURS_SCHEDULER, BINDING_DIRECT: OURS_DIRECT}  # binding mode -> side
KUBE_REPLICASETS = "kube: ReplicaSets (controller-manager + scheduler)"
KUBE_ALONE = "kube: scheduler alone (pods created directly)"
# The pods/s ratio each of our sides should reach over each kube side: Scheduler mode at least
# kube-scheduler's own speed (a pinned pod costs the scheduler one node, not all of them), Direct
# mode, which skips the scheduler, clearly more.
GOALS = {
    (OURS_SCHEDULER, KUBE_REPLICASETS): 1.0,
    (OURS_SCHEDULER, KUBE_ALONE): 1.0,
    (OURS_DIRECT, KUBE_REPLICASETS): 1.0,
    (OURS_DIRECT, KUBE_ALONE): 1.3,
}


def phase_order(sides: Sequence[str], number: int) -> list[str]:
    """The order in which round ``number`` (from 1) runs ``sides``: rotated by one every round, so
    that each side goes first as often as the others (with two sides: alternating). The first side
    of a round starts on a cluster that has just deleted the previous round's namespace; the others
    each follow a namespace deletion too."""
    if not sides:
        raise ValueError("no sides to order")
    shift = (number - 1) % len(sides)
    return [*sides[shift:], *sides[:shift]]


def _side(results: Sequence[PhaseResult], label: str) -> PhaseResult | None:
    return next((r for r in results if r.label == label), None)


def ratios(rounds: Sequence[Sequence[PhaseResult]], ours: str, kube: str) -> list[float]:
    """``ours`` pods/s over ``kube``'s, round by round (rounds without both sides are skipped)."""
    out = []
    for results in rounds:
        mine, other = _side(results, ours), _side(results, kube)
        if mine is not None and other is not None:
            out.append(mine.pods_per_second / other.pods_per_second)
    return out


def _present(rounds: Sequence[Sequence[PhaseResult]], order: Sequence[str]) -> list[str]:
    present = {r.label for results in rounds for r in results}
    return [label for label in order if label in present]


def ours_labels(rounds: Sequence[Sequence[PhaseResult]]) -> list[str]:
    """Our sides present, Scheduler mode first."""
    return _present(rounds, list(OURS_SIDES.values()))


def kube_labels(rounds: Sequence[Sequence[PhaseResult]]) -> list[str]:
    """The kube sides present, ReplicaSets first, then the scheduler alone."""
    return _present(rounds, (KUBE_REPLICASETS, KUBE_ALONE))


def median_round(rounds: Sequence[Sequence[PhaseResult]]) -> int:
    """Index of the round whose pods/s ratio of our first side over the first kube side is the
    median (the lower one of two)."""
    ours, kube = ours_labels(rounds)[0], kube_labels(rounds)[0]
    values = [_side(results, ours).pods_per_second / _side(results, kube).pods_per_second for results in rounds]
    return sorted(range(len(rounds)), key=lambda i: values[i])[(len(rounds) - 1) // 2]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _spread(values: Sequence[float], fmt: str) -> str:
    """``median (min-max)`` of the rounds' values; the median alone for one round."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(_median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(rounds: Sequence[Sequence[PhaseResult]], memory: dict | None, header: str) -> str:
    """The scale benchmark's tables: one row per phase in the order it ran, then per side the
    median and the spread (min-max) over the rounds, the pods/s ratios, and the memory line."""

    def opt(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    rows = []
    for number, results in enumerate(rounds, 1):
        for position, result in enumerate(results, 1):
            lat = list(result.latencies.values())
            rows.append(
                [
                    result.label,
                    str(number),
                    f"{position} of {len(results)}",
                    str(result.pods),
                    f"{result.created_seconds:.1f}",
                    f"{result.bound_seconds:.1f}",
                    f"{result.pods_per_second:.1f}",
                    f"{result.all_running_seconds:.1f}",
                    f"{percentile(lat, 50):.2f}",
                    f"{percentile(lat, 99):.2f}",
                    opt(None if result.requests_operator is None else result.requests_operator / result.pods, ".2f"),
                    f"{result.requests_all / result.pods:.2f}",
                    opt(result.operator_cpu_s, ".1f"),
                    opt(result.operator_peak_rss_mb, ".0f"),
                ]
            )
    table = format_table(
        [
            "side",
            "round",
            "ran",
            "pods",
            "created s",
            "bound s",
            "pods/s",
            "Running s",
            "group p50 s",
            "group p99 s",
            "req/pod (operator)",
            "req/pod (all)",
            "op CPU s",
            "op peak RSS MB",
        ],
        rows,
    )
    summary_rows = []
    for label in [*ours_labels(rounds), *kube_labels(rounds)]:
        phases = [r for results in rounds for r in results if r.label == label]
        summary_rows.append(
            [
                label,
                str(len(phases)),
                _spread([p.pods_per_second for p in phases], ".1f"),
                _spread([percentile(list(p.latencies.values()), 50) for p in phases], ".2f"),
                _spread([percentile(list(p.latencies.values()), 99) for p in phases], ".2f"),
                _spread([p.requests_all / p.pods for p in phases], ".2f"),
            ]
        )
    summary = format_table(
        ["side", "rounds", "pods/s", "group p50 s", "group p99 s", "req/pod (all)"],
        summary_rows,
    )
    lines = [
        header,
        "",
        table,
        "",
        f"median over {len(rounds)} round(s), (min-max) of the rounds:" if len(rounds) > 1 else "one round:",
        summary,
        "",
    ]
    for ours in ours_labels(rounds):
        for kube in kube_labels(rounds):
            values = ratios(rounds, ours, kube)
            ratio, goal = _median(values), GOALS[(ours, kube)]
            lines.append(
                f"ratio pods/s {ours} / {kube}: {ratio:.2f}"
                + (
                    f" (median of {len(values)} rounds: {', '.join(f'{r:.2f}' for r in values)})"
                    if len(values) > 1
                    else ""
                )
                + f"  (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})"
            )
    if memory is not None:
        lines.append(
            f"operator RSS with {memory['pods']} managed pods Running: {memory['rss_mb']:.0f} MB "
            f"(peak {memory['peak_rss_mb']:.0f} MB, {memory['rss_before_mb']:.0f} MB before; "
            f"goal <= 200 MB: {'met' if memory['rss_mb'] <= 200 else 'NOT met'}); "
            f"{memory['pods']} placed in {memory['placed_seconds']:.0f} s; the operator's own ledger gauge: "
            + ("not served" if memory["ledger_pods"] is None else f"{memory['ledger_pods']:.0f} managed pods")
        )
    return "\n".join(lines)


def plot(results: Sequence[PhaseResult], path: Path, title: str) -> None:
    """A PNG of pods bound over time, one step curve per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for result in results:
        xs, ys = bound_curve(result.bound.values(), result.start)
        axes.step([0.0, *xs], [0, *ys], where="post", label=f"{result.label} ({result.pods_per_second:.0f} pods/s)")
    axes.set_xlabel("seconds since the first create call")
    axes.set_ylabel("pods bound")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
