"""Bad input: invalid NeuronInference specs are refused with a clear message and change nothing.

- ``API_REJECTED`` (``bad_specs.py``, 40+ specs): the API server refuses each at create time (schema,
  CEL, name rules) with the message the user needs; nothing is stored.
- ``OPERATOR_REFUSED``: specs that pass the schema but cannot be served (pod-security policy, more
  cores than any node has, a trn1 shape, a selector that matches nothing, a pod the API server
  refuses) get no pod and ``Placed=False`` with the reason, while a valid resource is served.

The runtime's bad ``NEURON_RT_VISIBLE_CORES`` / ``NEURON_RT_NUM_CORES`` / ``device_ids`` corpus
lives with the runtime's tests (``tests/runtime/test_cores.py``: ``BAD_ENVIRONMENTS``,
``BAD_DEVICE_IDS``); it is not repeated here.
"""

from __future__ import annotations

import json
import uuid

import pytest

from neuronplace.local.reliability import bad_specs
from neuronplace.local.reliability.scenarios import assert_api_rejects

pytestmark = pytest.mark.cluster


def test_the_corpus_is_large_enough_and_its_names_unique():
    ids = [case.id for case in bad_specs.API_REJECTED + bad_specs.OPERATOR_REFUSED]
    assert len(bad_specs.API_REJECTED) + len(bad_specs.OPERATOR_REFUSED) >= 30
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def corpus_namespace(local_cluster, reliability_crd):
    """One namespace for the whole corpus: nothing may ever be stored in it."""
    name = f"bad-specs-{uuid.uuid4().hex[:6]}"
    local_cluster.kubectl("create", "namespace", name)
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("case", bad_specs.API_REJECTED, ids=lambda case: case.id)
def test_api_server_rejects_with_a_clear_message(local_cluster, corpus_namespace, case):
    def kubectl(*args, **kwargs):
        return local_cluster.kubectl(*args, "-n", corpus_namespace, **kwargs)

    assert_api_rejects(kubectl, case, "bad")


def test_the_valid_base_spec_is_accepted(local_cluster, corpus_namespace):
    """Guards the corpus: every case differs from this spec in one thing only, so it must pass."""
    local_cluster.kubectl(
        "create", "--dry-run=server", "-n", corpus_namespace, "-f", "-", input=json.dumps(bad_specs.valid("good"))
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_operator_refuses_with_a_reason_and_keeps_serving_valid_ones(run_scenario):
    run_scenario("operator_refuses_bad_specs")
