"""The shipped examples are written for EKS: their NeuronInferences tolerate the Neuron nodes' taint
and not kwok's, the LLM servers' tensor parallelism matches their cores, and `neuronplace plan` places
every replica on a fleet whose nodes carry the Neuron taint (the cluster test applies them for real:
tests/cluster/test_operator_examples.py)."""

from __future__ import annotations

import yaml

from neuronplace.cli.main import main
from neuronplace.cli.plan import fleet_objects
from neuronplace.local.examples import example_files, example_resources, kwok_toleration, on_simulated_nodes
from neuronplace.placement.names import KIND

NEURON_TAINT = {"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}
EKS_FLEET = "inf2.48xlarge=3,inf1.6xlarge=1,trn1.32xlarge=1,trn2.48xlarge=1"


def _inferences() -> list[dict]:
    return [r for r in example_resources() if r["kind"] == KIND]


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("key") != taint["key"] or toleration.get("effect", taint["effect"]) != taint["effect"]:
        return False
    return toleration.get("operator") == "Exists" or toleration.get("value") == taint["value"]


def test_every_inference_tolerates_the_neuron_taint_and_not_kwoks():
    inferences = _inferences()
    assert len(inferences) == len(example_files()) == 6
    for inference in inferences:
        tolerations = inference["spec"]["placement"]["tolerations"]
        name = inference["metadata"]["name"]
        assert any(_tolerates(t, NEURON_TAINT) for t in tolerations), name
        assert not any(t["key"].startswith("kwok") for t in tolerations), name


def test_on_simulated_nodes_adds_kwoks_toleration_to_a_copy():
    inference = _inferences()[0]
    simulated = on_simulated_nodes(inference)
    assert simulated["spec"]["placement"]["tolerations"] == [
        *inference["spec"]["placement"]["tolerations"],
        kwok_toleration(),
    ]
    assert kwok_toleration() not in inference["spec"]["placement"]["tolerations"]
    assert on_simulated_nodes(simulated) == simulated
    service = {"kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    assert on_simulated_nodes(service) is service


def test_llm_servers_use_their_cores_for_tensor_parallelism_with_shared_memory():
    for inference in _inferences():
        (container,) = inference["spec"]["template"]["spec"]["containers"]
        if container["command"][:2] != ["vllm", "serve"]:
            continue
        args = container["args"]
        tensor_parallel = int(args[args.index("--tensor-parallel-size") + 1])
        assert tensor_parallel == inference["spec"]["coresPerReplica"], inference["metadata"]["name"]
        volumes = {v["name"]: v for v in inference["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_the_llm_examples_come_with_a_service_a_budget_probes_and_a_compile_cache():
    for file_name in ("llm-vllm-inf2.yaml", "trn2-data-parallel.yaml"):
        (path,) = [p for p in example_files() if p.name == file_name]
        objects = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
        assert set(objects) == {KIND, "Service", "PodDisruptionBudget"}
        template = objects[KIND]["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert objects["Service"]["spec"]["selector"].items() <= labels.items()
        assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = template["spec"]["containers"]
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
        assert "compile-cache" in {m["name"] for m in container["volumeMounts"]}
        assert any(e["name"] == "NEURON_COMPILED_ARTIFACTS" for e in container["env"])


def _tainted_state(tmp_path) -> str:
    nodes, _ = fleet_objects(EKS_FLEET)
    for node in nodes:
        node["spec"]["taints"] = [dict(NEURON_TAINT)]
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}))
    return str(path)


def _plan(capsys, *argv: str) -> tuple[int, list[list[str]]]:
    code = main(["plan", *argv])
    out = capsys.readouterr().out
    return code, [line.split() for line in out.split("\n\n")[0].splitlines()[1:]]


def test_plan_places_every_example_on_neuron_tainted_nodes(tmp_path, capsys):
    code, rows = _plan(capsys, "--cluster-state", _tainted_state(tmp_path), *map(str, example_files()))
    assert code == 0, rows
    expected = {(i["metadata"]["name"], r) for i in _inferences() for r in range(i["spec"].get("replicas", 1))}
    assert {(row[0].split("/")[1], int(row[1])) for row in rows} == expected
    assert all(row[2] == "placed" for row in rows)
    servers = [row for row in rows if row[0] == "default/llama70b-trn2"]
    assert [(row[3], row[4]) for row in servers] == [("trn2-48xlarge-0", "0-31"), ("trn2-48xlarge-0", "32-63")]


def test_plan_refuses_an_example_without_the_neuron_toleration(tmp_path, capsys):
    """The placement honours the taint: the same example without its toleration fits nowhere."""
    (path,) = [p for p in example_files() if p.name == "llm-vllm-inf2.yaml"]
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for document in documents:
        if document["kind"] == KIND:
            document["spec"]["placement"]["tolerations"] = []
    stripped = tmp_path / "untolerated.yaml"
    stripped.write_text(yaml.safe_dump_all(documents))
    code, rows = _plan(capsys, "--cluster-state", _tainted_state(tmp_path), str(stripped))
    assert code == 1
    assert rows and all(row[2] != "placed" for row in rows)
