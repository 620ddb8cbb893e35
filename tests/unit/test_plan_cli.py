"""`neuronplace plan`: dry-run placement from a fleet spec or a saved cluster state."""

import functools

import yaml

from neuronplace.cli.main import main
from support import builders
from support.builders import managed_pod

# Resources as a user writes them: no placement but what a test names.
inference = functools.partial(builders.inference, strategy=None, tolerations=(), image="example/model:1", labels={})


def write(tmp_path, name, *documents):
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def run(capsys, *argv):
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out):
    """Table rows as lists of cells (header skipped, up to the first blank line)."""
    lines = out.split("\n\n")[0].splitlines()[1:]
    return [line.split() for line in lines]


def test_fleet_spec_places_every_replica(tmp_path, capsys):
    files = write(
        tmp_path, "a.yaml", inference("bert", replicas=3, cores=8, processes=2), inference("tiny", replicas=2, cores=1)
    )
    code, out, err = run(capsys, "--fleet", "inf2.48xlarge=1,trn1.32xlarge=1", files)
    assert code == 0 and err == ""
    assert [r[:6] for r in rows(out)] == [
        ["default/bert", "0", "placed", "inf2-48xlarge-0", "0-7", "0,1,2,3"],
        ["default/bert", "1", "placed", "inf2-48xlarge-0", "8-15", "4,5,6,7"],
        ["default/bert", "2", "placed", "inf2-48xlarge-0", "16-23", "8,9,10,11"],
        ["default/tiny", "0", "placed", "trn1-32xlarge-0", "0", "0"],
        ["default/tiny", "1", "placed", "trn1-32xlarge-0", "1", "0"],
    ]
    assert "Cannot be placed" not in out
    assert out.rstrip().endswith("5 replicas placed, 0 cannot be placed")


def test_unplaceable_replicas_give_reasons_and_exit_1(tmp_path, capsys):
    files = write(
        tmp_path, "a.yaml", inference("bert", replicas=3, cores=8, processes=2), inference("tiny", replicas=2, cores=1)
    )
    code, out, _ = run(capsys, "--fleet", "inf2.48xlarge=1", files)
    assert code == 1
    table = rows(out)
    assert [r[:5] for r in table[:3]] == [
        ["default/bert", "0", "placed", "inf2-48xlarge-0", "0-7"],
        ["default/bert", "1", "placed", "inf2-48xlarge-0", "8-15"],
        ["default/bert", "2", "placed", "inf2-48xlarge-0", "16-23"],
    ]
    assert table[0][6:] == ["0-3", "4-7"]  # one NEURON_RT_VISIBLE_CORES per process, device-local
    assert [r[2] for r in table[3:]] == ["unplaceable", "unplaceable"]
    assert "default/tiny replica 0: needs 1 contiguous core; no free cores on the 1 node that could take it" in out
    assert out.rstrip().endswith("3 replicas placed, 2 cannot be placed")


def test_global_numbering_and_the_trn1_shape_rule(tmp_path, capsys):
    files = write(
        tmp_path,
        "a.yaml",
        inference("a", replicas=1, cores=4),
        inference("b", replicas=1, cores=4, shapePolicy="Permissive"),
    )
    code, out, _ = run(capsys, "--fleet", "trn1.32xlarge=1", "--numbering", "global", files)
    assert code == 1
    table = rows(out)
    assert table[0][2] == "unplaceable"
    assert table[1][:5] == ["default/b", "0", "placed", "trn1-32xlarge-0", "0-3"]
    assert "not a 1, 4, 8 or 16-device shape" in out


def cluster_state(tmp_path):
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "inf2-a", "labels": {"node.kubernetes.io/instance-type": "inf2.48xlarge"}},
        "spec": {},
        "status": {
            "allocatable": {"aws.amazon.com/neuroncore": "24", "cpu": "192", "memory": "768Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    running = {"apiVersion": "v1", "kind": "Pod", **managed_pod("bert-0", "inf2-a", "0-7", inference="bert")}
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "ml", "annotations": {"AWS_NEURON_IDS": "8,9"}},
        "spec": {
            "nodeName": "inf2-a",
            "containers": [{"name": "c", "resources": {"limits": {"aws.amazon.com/neuroncore": "2"}}}],
        },
        "status": {"phase": "Running"},
    }
    return write(tmp_path, "state.yaml", {"apiVersion": "v1", "kind": "List", "items": [node, running, foreign]})


def test_cluster_state_counts_existing_pods(tmp_path, capsys):
    state = cluster_state(tmp_path)
    files = write(tmp_path, "bert.yaml", inference("bert", replicas=3, cores=4))
    code, out, _ = run(capsys, "--cluster-state", state, files)
    assert code == 0
    table = rows(out)
    assert table[0][:5] == ["default/bert", "0", "existing", "inf2-a", "0-7"]
    # cores 8-9 belong to the foreign pod: the new replicas start after them
    assert [r[:5] for r in table[1:]] == [
        ["default/bert", "1", "placed", "inf2-a", "10-13"],
        ["default/bert", "2", "placed", "inf2-a", "14-17"],
    ]
    assert "2 replicas placed, 1 already running, 0 cannot be placed" in out


def test_cluster_state_and_fleet_together(tmp_path, capsys):
    state = cluster_state(tmp_path)
    files = write(tmp_path, "big.yaml", inference("big", replicas=2, cores=16))
    code, out, _ = run(capsys, "--cluster-state", state, "--fleet", "inf2.48xlarge=1", files)
    assert code == 1  # only the new, empty node has 16 contiguous cores free
    table = rows(out)
    assert table[0][:4] == ["default/big", "0", "placed", "inf2-48xlarge-0"]
    assert table[1][2] == "unplaceable"


def test_invalid_resource_is_reported_not_raised(tmp_path, capsys):
    files = write(tmp_path, "bad.yaml", inference("odd", replicas=1, cores=6, processes=4))
    code, out, _ = run(capsys, "--fleet", "inf2.48xlarge=1", files)
    assert code == 1
    assert (
        "default/odd replica -: spec.processesPerReplica must be a positive integer dividing coresPerReplica=6" in out
    )


def test_unusable_input_exits_2(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", inference("a", replicas=1, cores=1))
    not_inference = write(tmp_path, "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    cases = [
        (["--fleet", "inf2.48xlarge=1", str(tmp_path / "missing.yaml")], "cannot read"),
        (["--fleet", "inf2.48xlarge=1", not_inference], "holds no NeuronInference"),
        (["--fleet", "inf2.48xlarge=1", str(broken)], "not valid YAML"),
        (["--fleet", "m5.large=1", good], "unknown instance type 'm5.large'"),
        (["--fleet", "inf2.48xlarge", good], "TYPE=COUNT"),
        ([good], "--fleet"),
        (["--cluster-state", not_inference, good], "no Node objects"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert message in err, (argv, err)
        assert out == ""


def test_same_input_same_plan(tmp_path, capsys):
    files = write(
        tmp_path, "a.yaml", inference("a", replicas=4, cores=2, strategy="Spread"), inference("b", replicas=3, cores=3)
    )
    first = run(capsys, "--fleet", "inf2.48xlarge=2,inf2.24xlarge=1", files)
    second = run(capsys, "--fleet", "inf2.48xlarge=2,inf2.24xlarge=1", files)
    assert first == second
    spread_nodes = [r[3] for r in rows(first[1]) if r[0] == "default/a"]
    assert len(set(spread_nodes)) == 3


def test_the_shipped_examples_all_fit_the_demo_fleet(capsys):
    from neuronplace.cli.demo import DEFAULT_FLEET
    from neuronplace.local.examples import example_files

    files = example_files()
    assert files, "neuronplace.examples ships the example files"
    code, out, err = run(capsys, "--fleet", DEFAULT_FLEET, *map(str, files))
    assert code == 0, out + err
    names = {row[0].split("/")[1] for row in rows(out)}
    assert names == {"qwen-inf2", "resnet-inf1", "llama-trn1", "qwen-spread", "llama-inf2", "llama70b-trn2"}
