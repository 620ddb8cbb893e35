"""The reusable parts of the scale benchmark (``benchmarks/scale.py``; the benchmark itself never runs
in the suite): workload, percentiles and latencies, Prometheus text, the report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuronplace.local.bench import procstats, prometheus, results, workload


def test_fleet_halves_with_the_odd_node_on_inf2():
    assert workload.fleet_for(1000) == {"inf2.48xlarge": 500, "trn1.32xlarge": 500}
    assert workload.fleet_for(7) == {"inf2.48xlarge": 4, "trn1.32xlarge": 3}
    with pytest.raises(ValueError, match="at least 2"):
        workload.fleet_for(1)


def test_workload_totals_the_pods_and_cycles_the_mix():
    groups = workload.workload(95, group_size=10)
    assert sum(g.replicas for g in groups) == 95
    assert [g.replicas for g in groups] == [10] * 9 + [5]
    assert [(g.instance_type, g.cores) for g in groups[:7]] == [*workload.MIX, workload.MIX[0]]
    assert len({g.name for g in groups}) == len(groups)
    with pytest.raises(ValueError):
        workload.workload(0)


def test_check_fits_refuses_a_workload_beyond_the_fleet():
    workload.check_fits(workload.workload(200), workload.fleet_for(200))
    with pytest.raises(ValueError, match="cores but the fleet has"):
        workload.check_fits(workload.workload(200), workload.fleet_for(20))


def test_extra_nodes_cover_each_family_on_its_own():
    groups = workload.workload(10_000, group_size=100, mix=(("inf2.48xlarge", 1), ("trn1.32xlarge", 1)))
    extra = workload.extra_nodes(groups, workload.fleet_for(200))
    # 5,000 one-core replicas per family, 5 % headroom: 5,250 cores = 219 inf2 / 165 trn1 nodes in all.
    assert extra == {"inf2.48xlarge": 219 - 100, "trn1.32xlarge": 165 - 100}
    assert workload.extra_nodes(groups, workload.fleet_for(1000)) == {}


def test_percentile_is_nearest_rank():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert results.percentile(values, 50) == 3.0
    assert results.percentile(values, 99) == 5.0
    assert results.percentile(values, 0) == 1.0
    assert results.percentile(list(range(1, 101)), 99) == 99
    with pytest.raises(ValueError):
        results.percentile([], 50)


def test_group_latency_is_until_the_last_pod_is_bound():
    created = {"a": 10.0, "b": 11.0}
    bound = {"a-0": 10.5, "a-1": 12.0, "b-0": 11.25}
    members = {"a": {"a-0", "a-1"}, "b": {"b-0"}}
    assert results.group_latencies(created, bound, members) == {"a": 2.0, "b": 0.25}
    with pytest.raises(ValueError, match="never bound"):
        results.group_latencies(created, {"a-0": 10.5, "b-0": 11.25}, members)


def test_bound_curve_counts_up_in_time_order():
    assert results.bound_curve([3.0, 1.0, 2.0], 1.0) == ([0.0, 1.0, 2.0], [1, 2, 3])


def test_metric_sum_filters_by_name_and_labels():
    text = "\n".join(
        [
            "# HELP apiserver_request_total Counter of apiserver requests",
            "# TYPE apiserver_request_total counter",
            'apiserver_request_total{code="201",resource="pods",verb="POST"} 10',
            'apiserver_request_total{code="200",resource="pods",verb="GET"} 2.5e+01',
            'apiserver_request_total_other{code="201"} 1000',
            'apiserver_flowcontrol_dispatched_requests_total{flow_schema="ours",priority_level="exempt"} 7',
            'apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"} 9',
            'weird{label="with \\"quote\\", comma",resource="pods"} 3',
        ]
    )
    assert prometheus.metric_sum(text, "apiserver_request_total") == 35
    assert prometheus.metric_sum(text, "apiserver_request_total", verb="POST") == 10
    assert prometheus.metric_sum(text, "apiserver_flowcontrol_dispatched_requests_total", flow_schema="ours") == 7
    assert prometheus.metric_sum(text, "apiserver_flowcontrol_dispatched_requests_total", flow_schema="none") == 0
    assert prometheus.metric_sum(text, "weird", resource="pods") == 3


def test_manifests_ask_for_the_same_cores_on_the_same_family():
    group = workload.Group("g0001-4c", "inf2.48xlarge", 4, 3)
    inference = workload.inference_manifest(group)
    pod = workload.plain_pod(group, 2)
    assert inference["spec"]["replicas"] == 3 and inference["spec"]["coresPerReplica"] == 4
    assert inference["spec"]["placement"]["nodeSelector"] == pod["spec"]["nodeSelector"]
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"aws.amazon.com/neuroncore": "4"}
    assert pod["metadata"]["name"] == "g0001-4c-2"
    assert "schedulerName" not in pod["spec"] and "nodeName" not in pod["spec"]


def test_replicaset_twin_selects_its_pods_and_asks_the_same():
    group = workload.Group("g0003-8c", "trn1.32xlarge", 8, 10)
    replicaset = workload.replicaset_manifest(group)
    template = replicaset["spec"]["template"]
    assert replicaset["spec"]["replicas"] == 10
    assert replicaset["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["spec"] == workload.plain_pod(group, 0)["spec"]


def phase(label, pods, seconds):
    bound = {f"p{i}": 100.0 + seconds * (i + 1) / pods for i in range(pods)}
    return results.PhaseResult(label, pods, 100.0, bound, dict(bound), {"g": seconds}, 0.5, 2.0 * pods)


def test_median_round_and_report():
    ours, rs, alone = results.OURS_SCHEDULER, results.KUBE_REPLICASETS, results.KUBE_ALONE
    rounds = [
        [phase(ours, 10, 1.0), phase(rs, 10, 2.0), phase(alone, 10, 0.5)],  # ratios 2.0 / 0.5
        [phase(rs, 10, 2.0), phase(alone, 10, 1.0), phase(ours, 10, 4.0)],  # ratios 0.5 / 0.25
        [phase(alone, 10, 1.0), phase(ours, 10, 2.0), phase(rs, 10, 2.0)],  # ratios 1.0 / 0.5
    ]
    assert results.median_round(rounds) == 2  # by ours / the first kube side (ReplicaSets)
    assert results.median_round(rounds[:2]) == 1  # the lower of two
    assert results.ratios(rounds, ours, alone) == [0.5, 0.25, 0.5]
    text = results.report(rounds, None, "header")
    assert f"{ours} / {rs}: 1.00 (median of 3 rounds: 2.00, 0.50, 1.00)" in text
    assert f"{ours} / {alone}: 0.50 (median of 3 rounds: 0.50, 0.25, 0.50)" in text
    assert "goal >= 1.0: met" in text and "goal >= 1.0: NOT met" in text
    # The summary: the median pods/s of each side with the spread of the rounds.
    summary = text.split("min-max) of the rounds:")[1]
    assert any(line.startswith(ours) and "5.0 (2.5-10.0)" in line for line in summary.splitlines())
    assert any(line.startswith(alone) and "10.0 (10.0-20.0)" in line for line in summary.splitlines())
    # Every phase has its row, with when it ran in its round.
    assert "3 of 3" in text and text.count(ours) >= 4


def test_report_compares_both_binding_modes_with_their_own_goals():
    scheduler, direct, alone = results.OURS_SCHEDULER, results.OURS_DIRECT, results.KUBE_ALONE
    rounds = [
        [phase(scheduler, 10, 1.0), phase(direct, 10, 0.8), phase(alone, 10, 1.0)],  # 1.0 / 1.25
        [phase(direct, 10, 0.5), phase(alone, 10, 1.0), phase(scheduler, 10, 1.25)],  # 0.8 / 2.0
    ]
    assert results.ours_labels(rounds) == [scheduler, direct]
    assert results.kube_labels(rounds) == [alone]
    text = results.report(rounds, None, "header")
    assert f"{scheduler} / {alone}: 0.90 (median of 2 rounds: 1.00, 0.80)  (goal >= 1.0: NOT met)" in text
    assert f"{direct} / {alone}: 1.63 (median of 2 rounds: 1.25, 2.00)  (goal >= 1.3: met)" in text


def test_phase_order_rotates_so_every_side_goes_first():
    sides = ["a", "b", "c"]
    orders = [results.phase_order(sides, n) for n in (1, 2, 3, 4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert [results.phase_order(["a", "b"], n)[0] for n in (1, 2, 3)] == ["a", "b", "a"]
    with pytest.raises(ValueError):
        results.phase_order([], 1)


def test_table_aligns_columns():
    table = results.format_table(["", "pods/s"], [["ours", "12.5"], ["kube-scheduler", "3.0"]])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("ours") and lines[2].endswith("12.5")


def test_proc_figures_of_this_process():
    assert procstats.status_kb(os.getpid(), "VmRSS") > 0
    assert procstats.status_kb(os.getpid(), "VmHWM") >= procstats.status_kb(os.getpid(), "VmRSS")
    before = procstats.cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert procstats.cpu_seconds(os.getpid()) >= before
    assert procstats.status_kb(2**22 + 7, "VmRSS") == 0  # no such process


def test_the_benchmark_script_still_answers_help():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--nodes",
        "--pods",
        "--plot",
        "--kube",
        "--binding",
        "--rounds",
        "--quick",
        "--no-monitor",
        "--memory",
        "--timeout",
        "--operator-env",
        "--name",
    ):
        assert flag in result.stdout
