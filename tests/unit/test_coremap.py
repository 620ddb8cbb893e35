"""The text core map shared by `neuronplace demo` and `neuronplace cores`, its PNG (drawn by the CLI,
not by placement), and the operator settings."""

from __future__ import annotations

import argparse

import pytest

from neuronplace.cli import run as run_cli
from neuronplace.cli.cores import render_png
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement.coremap import node_maps, render
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.selectors import selector_matches
from support.builders import foreign_pod, managed_pod, node


def pod(name, node_name, cores=None, foreign_count=None):
    """A replica of the inference its name says holding ``cores``, or a foreign pod of ``foreign_count``."""
    if cores is not None:
        return managed_pod(name, node_name, cores, inference=name.rsplit("-", 1)[0], namespace="ml")
    return foreign_pod(name, node_name, foreign_count, namespace="ml")


def two_nodes():
    inventories = [
        inventory_from_node(node("inf2-b", "inf2.48xlarge", 24)),
        inventory_from_node(node("inf1-a", "inf1.6xlarge", 16)),
    ]
    ledger = Ledger.from_pods(
        [
            pod("bert-0", "inf2-b", "0-3"),
            pod("bert-1", "inf2-b", "4-7"),
            pod("other", "inf2-b", foreign_count=2),
            pod("resnet-0", "inf1-a", "8-15"),
        ],
        trust_any_inference=True,
    )
    ledger.learn_nodes(inventories)
    return node_maps(inventories, ledger)


def test_map_shows_pods_free_cores_and_foreign_pods():
    maps = two_nodes()
    assert [m.name for m in maps] == ["inf1-a", "inf2-b"]
    assert maps[0].free == 8 and maps[1].free == 24 - 8 - 2
    text = render(maps)
    lines = text.splitlines()
    assert lines[0].startswith("inf1-a") and "16 cores, 8 free" in lines[0]
    assert lines[1].strip() == ".... .... AAAA AAAA"
    assert "A ml/resnet-0 8-15" in lines[2]
    assert lines[4].strip().startswith("AA AA BB BB")
    assert lines[4].count("#") == 2 and lines[4].count(".") == 14
    assert "B ml/bert-1 4-7" in lines[5] and "# ml/other (not placed by neuronplace)" in lines[5]


def test_map_says_why_a_node_is_inconsistent():
    inventories = [inventory_from_node(node("inf2-b", "inf2.48xlarge", 24))]
    fake = pod("fake-0", "inf2-b", "0-23")
    del fake["metadata"]["ownerReferences"]
    fake["spec"]["containers"] = [{"name": "c"}]  # claims the whole node and requests nothing
    real = pod("bert-0", "inf2-b", "0-3")
    ledger = Ledger.from_pods([fake, real], trust_any_inference=True)
    ledger.learn_nodes(inventories)
    [node_map] = node_maps(inventories, ledger)
    assert node_map.free == 20 and node_map.inconsistent == (("ml/fake-0", "NotOwned"),)
    last = render([node_map]).splitlines()[-1]
    assert (
        last == "  inconsistent: ml/fake-0 NotOwned (has the inference label, but no known NeuronInference controls it)"
    )


def test_png_of_the_map(tmp_path):
    path = tmp_path / "cores.png"
    render_png(two_nodes(), str(path))
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_empty_cluster():
    assert render([]) == "no nodes with NeuronCores\n"


def test_settings_from_env_and_validation():
    settings = OperatorSettings.from_env(
        {
            "NEURONPLACE_NAMESPACES": "a, b",
            "NEURONPLACE_NUMBERING": "global",
            "NEURONPLACE_NODE_GRACE_SECONDS": "7.5",
            "NEURONPLACE_ALLOW_PRIVILEGED": "yes",
        }
    )
    assert settings.namespaces == ("a", "b") and settings.numbering == "global"
    assert settings.node_grace_seconds == 7.5 and settings.allow_privileged
    assert OperatorSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="numbering 'local'"):
        OperatorSettings(numbering="local")
    with pytest.raises(ValueError, match="NEURONPLACE_WORKERS='many'"):
        OperatorSettings.from_env({"NEURONPLACE_WORKERS": "many"})
    with pytest.raises(ValueError, match="node selector"):
        OperatorSettings(node_selector="a b=c")


def test_pod_security_settings_from_env_flags_and_validation():
    settings = OperatorSettings.from_env(
        {"NEURONPLACE_POD_SECURITY": "restricted", "NEURONPLACE_ALLOW_VOLUME_TYPES": "nfs, gitRepo"}
    )
    assert settings.pod_security == "restricted" and settings.allow_volume_types == ("nfs", "gitRepo")
    policy = settings.template_policy()
    assert policy.level == "restricted" and policy.allowed_volume_types == {"nfs", "gitRepo"}
    assert OperatorSettings.from_env(settings.to_env()) == settings
    assert OperatorSettings().template_policy().level == "baseline"
    with pytest.raises(ValueError, match="'strict' is not one of baseline, restricted"):
        OperatorSettings.from_env({"NEURONPLACE_POD_SECURITY": "strict"})
    with pytest.raises(ValueError, match="hostPath cannot be allowed"):
        OperatorSettings.from_env({"NEURONPLACE_ALLOW_VOLUME_TYPES": "hostPath"})
    assert OperatorSettings.from_env({"NEURONPLACE_METRICS_ADDRESS": "127.0.0.1"}).metrics_address == "127.0.0.1"
    with pytest.raises(ValueError, match="metrics address must be an IP address"):
        OperatorSettings(metrics_address="localhost:9090")

    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    from_flags = run_cli.settings_from_args(
        parser.parse_args(["--pod-security", "restricted", "--allow-volume-types", "ephemeral"])
    )
    assert from_flags.pod_security == "restricted" and from_flags.allow_volume_types == ("ephemeral",)


def test_node_selector_matching():
    labels = {"pool": "a", "neuron": "true"}
    assert selector_matches("", labels)
    assert selector_matches("pool=a,neuron", labels)
    assert not selector_matches("pool=b", labels)
    assert not selector_matches("pool!=a", labels)
    assert selector_matches("!gpu", labels) and not selector_matches("!neuron", labels)
