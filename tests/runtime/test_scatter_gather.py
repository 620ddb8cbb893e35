"""Scatter and gather as torch.neuron documents them: the documented split, nested containers, and the gaps torch leaves."""

import dataclasses
import warnings
from collections import OrderedDict, namedtuple
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from neuronplace.runtime.scatter_gather import batch_size, chunk_bounds, gather, scatter  # noqa: E402

pytestmark = pytest.mark.torch

Pair = namedtuple("Pair", "left right")


class Typed(NamedTuple):
    value: object
    label: object


@dataclasses.dataclass
class Output:
    logits: object
    name: str
    extra: object = None


def lengths(rows, cores, split_size=None):
    return [length for _, length in chunk_bounds(rows, cores, split_size)]


def test_remainder_goes_to_the_first_chunks():
    assert lengths(5, 4) == [2, 1, 1, 1]
    assert lengths(8, 3) == [3, 3, 2]
    assert lengths(8, 4) == [2, 2, 2, 2]


def test_fewer_rows_than_cores_gives_one_chunk_per_row():
    assert lengths(3, 8) == [1, 1, 1]
    assert lengths(0, 4) == []


def test_split_size_gives_ceil_chunks():
    assert lengths(10, 2, split_size=3) == [3, 3, 3, 1]
    assert lengths(4, 2, split_size=8) == [4]
    with pytest.raises(ValueError, match="split_size"):
        chunk_bounds(4, 2, split_size=0)


def test_scatter_walks_containers_and_repeats_non_tensor_leaves():
    x = torch.arange(10).reshape(5, 2)
    batch = {"pair": Pair(x, [x, "tag"]), "scale": 3, "temperature": torch.tensor(0.5)}
    chunks = scatter(batch, chunk_bounds(5, 2), 0)
    assert len(chunks) == 2
    first, second = chunks
    assert isinstance(first["pair"], Pair) and isinstance(first["pair"].right, list)
    assert first["pair"].left.shape == (3, 2) and second["pair"].left.shape == (2, 2)
    assert first["scale"] == 3 and second["pair"].right[1] == "tag"
    assert first["temperature"].item() == 0.5  # a 0-d tensor cannot be split: every chunk gets it


def test_tensors_that_disagree_on_the_batch_are_refused():
    with pytest.raises(ValueError, match=r"\(4, 2\) has 4.*\(3,\) has 3"):
        batch_size((torch.zeros(4, 2), torch.zeros(3)), 0)
    with pytest.raises(ValueError, match="dim=2"):
        batch_size(torch.zeros(4, 2), 2)


def test_gather_rebuilds_every_container_type():
    chunks = [torch.ones(2, 3), torch.zeros(1, 3)]
    outputs = [{"out": Typed(c, "same"), "list": [c, None], "data": Output(c, "model", extra=7)} for c in chunks]
    result = gather(outputs, 0)
    assert isinstance(result["out"], Typed) and result["out"].label == "same"
    assert result["out"].value.shape == (3, 3)
    assert result["list"][1] is None
    assert isinstance(result["data"], Output) and result["data"].name == "model" and result["data"].extra == 7
    assert torch.equal(result["data"].logits, torch.cat(chunks))


def test_gather_keeps_dict_subclass_and_key_order():
    outputs = [OrderedDict(b=torch.ones(1), a=torch.zeros(1)) for _ in range(2)]
    result = gather(outputs, 0)
    assert type(result) is OrderedDict and list(result) == ["b", "a"]


def test_gather_refuses_mismatched_dict_keys():
    with pytest.raises(ValueError, match="different keys"):
        gather([{"a": torch.ones(1)}, {"b": torch.ones(1)}], 0)


def test_scalar_outputs_become_a_vector_with_a_warning():
    with pytest.warns(UserWarning, match="0-d"):
        result = gather([torch.tensor(1.0), torch.tensor(2.0)], 0)
    assert torch.equal(result, torch.tensor([1.0, 2.0]))


def test_disagreeing_leaves_come_back_per_chunk():
    assert gather([3, 3, 3], 0) == 3
    assert gather([1, 2], 0) == [1, 2]


# Nested batches for the round trip: tensors share the batch size; other leaves are constants.
def nested(rows):
    tensor = st.integers(0, 3).flatmap(lambda extra: st.just(torch.randn(rows, *([2] * extra))))
    leaf = st.one_of(tensor, st.integers(), st.text(max_size=3), st.none())
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.lists(inner, max_size=3).map(tuple),
            st.dictionaries(st.text(max_size=2), inner, max_size=3),
            st.tuples(inner, inner).map(lambda pair: Pair(*pair)),
            st.tuples(inner, st.text(max_size=2)).map(lambda pair: Output(pair[0], pair[1])),
        ),
        max_leaves=8,
    )


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name))
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 9).flatmap(lambda rows: st.tuples(st.just(rows), nested(rows))), st.integers(1, 5), st.data())
def test_scatter_then_gather_returns_the_batch(rows_and_batch, cores, data):
    rows, batch = rows_and_batch
    split_size = data.draw(st.one_of(st.none(), st.integers(1, rows + 1)))
    bounds = chunk_bounds(rows, cores, split_size)
    chunks = scatter(batch, bounds, 0)
    assert len(chunks) == len(bounds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tensor is 0-d here, so gather must not warn
        assert_same(gather(chunks, 0), batch)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2))
def test_scatter_then_gather_along_any_dim(rows, cores, dim):
    shape = [2, 3, 2]
    shape[dim] = rows
    x = torch.randn(*shape)
    chunks = scatter((x, {"x": x}), chunk_bounds(rows, cores), dim)
    assert all(chunk[0].shape[dim] >= 1 for chunk in chunks)
    assert_same(gather(chunks, dim), (x, {"x": x}))
