"""visible_cores() and device_ids normalisation: container-visible ids vs process-local device_ids, and bad input."""

import subprocess
import sys
import textwrap

import pytest

from neuronplace.runtime import visible_cores
from neuronplace.runtime.cores import normalize_device_ids


def test_visible_cores_reads_each_spelling():
    assert visible_cores({"NEURON_RT_VISIBLE_CORES": "3"}) == [3]
    assert visible_cores({"NEURON_RT_VISIBLE_CORES": "0-6"}) == list(range(7))
    assert visible_cores({"NEURON_RT_VISIBLE_CORES": "3,4,5"}) == [3, 4, 5]
    assert visible_cores({"NEURON_RT_VISIBLE_CORES": "3-5,6"}) == [3, 4, 5, 6]


def test_visible_cores_wins_over_num_cores():
    assert visible_cores({"NEURON_RT_VISIBLE_CORES": "7-15", "NEURON_RT_NUM_CORES": "2"}) == list(range(7, 16))


def test_num_cores_gives_zero_based_cores():
    assert visible_cores({"NEURON_RT_NUM_CORES": "4"}) == [0, 1, 2, 3]


def test_unset_or_zero_means_all_cores_of_the_backend():
    simulated = {"NEURONPLACE_BACKEND": "cpu", "NEURONPLACE_CPU_CORES": "16"}
    assert visible_cores(simulated) == list(range(16))
    assert visible_cores({**simulated, "NEURON_RT_NUM_CORES": "0"}) == list(range(16))


BAD_ENVIRONMENTS = [
    ("NEURON_RT_VISIBLE_CORES", "abc"),
    ("NEURON_RT_VISIBLE_CORES", "5-3"),
    ("NEURON_RT_VISIBLE_CORES", "3,5,6"),
    ("NEURON_RT_VISIBLE_CORES", "-1"),
    ("NEURON_RT_VISIBLE_CORES", ""),
    ("NEURON_RT_VISIBLE_CORES", " "),
    ("NEURON_RT_VISIBLE_CORES", "99999999999999999999"),
    ("NEURON_RT_VISIBLE_CORES", "0-99999"),
    ("NEURON_RT_VISIBLE_CORES", "1,"),
    ("NEURON_RT_VISIBLE_CORES", ",1"),
    ("NEURON_RT_VISIBLE_CORES", "1-"),
    ("NEURON_RT_VISIBLE_CORES", "0x3"),
    ("NEURON_RT_VISIBLE_CORES", "1.5"),
    ("NEURON_RT_VISIBLE_CORES", "nc:0"),
    ("NEURON_RT_VISIBLE_CORES", "0 - 3"),
    ("NEURON_RT_VISIBLE_CORES", "0..3"),
    ("NEURON_RT_VISIBLE_CORES", "3,2"),
    ("NEURON_RT_VISIBLE_CORES", "3\n,4"),
    ("NEURON_RT_VISIBLE_CORES", "٣"),  # a non-ASCII digit
    ("NEURON_RT_NUM_CORES", "abc"),
    ("NEURON_RT_NUM_CORES", "-1"),
    ("NEURON_RT_NUM_CORES", "1.5"),
    ("NEURON_RT_NUM_CORES", ""),
    ("NEURON_RT_NUM_CORES", "2-3"),
    ("NEURON_RT_NUM_CORES", "99999"),
    ("NEURON_RT_NUM_CORES", "٣"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_ENVIRONMENTS)
def test_bad_environment_raises_value_error_naming_it(variable, value):
    with pytest.raises(ValueError) as caught:
        visible_cores({variable: value})
    assert variable in str(caught.value)
    assert repr(value) in str(caught.value)


def test_device_ids_are_zero_based_within_the_visible_cores():
    # Seed page: a process with NEURON_RT_VISIBLE_CORES=7-15 calls core 7 'nc:0' and core 14 'nc:7'.
    visible = visible_cores({"NEURON_RT_VISIBLE_CORES": "7-15"})
    local = normalize_device_ids(["nc:0", "nc:7"], len(visible))
    assert [visible[i] for i in local] == [7, 14]
    assert normalize_device_ids([2, 0], 4) == [2, 0]
    assert normalize_device_ids(None, 3) == [0, 1, 2]


def test_a_core_of_another_process_cannot_be_addressed():
    visible = visible_cores({"NEURON_RT_VISIBLE_CORES": "0-6"})
    with pytest.raises(ValueError, match=r"'nc:14'.*0\.\.6"):
        normalize_device_ids(["nc:14"], len(visible))


BAD_DEVICE_IDS = [
    (["nc:4"], "'nc:4'"),
    ([4], "4"),
    ([-1], "-1"),
    ([0, 0], "0"),
    (["nc:1", 1], "1"),
    (["nc:x"], "'nc:x'"),
    (["nc1"], "'nc1'"),
    (["NC:0"], "'NC:0'"),
    (["nc:0 "], "'nc:0 '"),
    (["xnc:0"], "'xnc:0'"),
    ([1.0], "1.0"),
    ([True], "True"),
    ([None], "None"),
    ("nc:0", "'nc:0'"),
    (0, "0"),
    ([], "empty"),
]


@pytest.mark.parametrize(("device_ids", "named"), BAD_DEVICE_IDS)
def test_bad_device_ids_raise_value_error_naming_entry_and_range(device_ids, named):
    with pytest.raises(ValueError) as caught:
        normalize_device_ids(device_ids, 4)
    message = str(caught.value)
    assert named in message
    assert "0..3" in message


def test_grammar_and_visible_cores_import_without_torch():
    script = textwrap.dedent(
        """
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, BlockTorch())
        import neuronplace.runtime as runtime
        from neuronplace.runtime.coreset import CoreRange, format_core_set, parse_core_set
        assert runtime.visible_cores({"NEURON_RT_VISIBLE_CORES": "2-3"}) == [2, 3]
        assert runtime.visible_cores({"NEURONPLACE_BACKEND": "cpu", "NEURONPLACE_CPU_CORES": "4"}) == [0, 1, 2, 3]
        assert "torch" not in sys.modules
        try:
            runtime.DataParallel
        except ImportError:
            print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
