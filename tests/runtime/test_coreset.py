"""The NEURON_RT_VISIBLE_CORES grammar: accepted spellings, rejected ones, round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronplace.runtime.coreset import MAX_CORE_ID, CoreRange, format_core_set, parse_core_set


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("3", [3]),
        ("0-6", [0, 1, 2, 3, 4, 5, 6]),
        ("3,4,5,6", [3, 4, 5, 6]),
        ("3-5,6", [3, 4, 5, 6]),  # mixed form, runtime >= 2.16.18
        ("0-1,2-3", [0, 1, 2, 3]),
        (" 7-15 ", list(range(7, 16))),
        ("4-4", [4]),
    ],
)
def test_accepted_spellings(text, ids):
    assert parse_core_set(text) == ids


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("abc", "not a non-negative id"),
        ("5-3", "decreasing"),
        ("3,5,6", "not contiguous"),
        ("-1", "not a non-negative id"),
        ("", "empty"),
        ("   ", "empty"),
        ("99999999999999999999", "larger than the maximum"),
        ("1,", "not a non-negative id"),
        ("3,2", "not contiguous"),
        ("1-2-3", "not a non-negative id"),
    ],
)
def test_rejected_spellings_name_text_and_rule(text, rule):
    with pytest.raises(ValueError) as caught:
        parse_core_set(text)
    assert repr(text) in str(caught.value)
    assert rule in str(caught.value)


def test_format_rejects_gaps_and_empty():
    with pytest.raises(ValueError, match="not contiguous"):
        format_core_set([1, 3])
    with pytest.raises(ValueError, match="empty"):
        format_core_set([])
    with pytest.raises(ValueError, match="non-negative"):
        format_core_set([-1, 0])


runs = st.builds(
    lambda start, count: list(range(start, start + count)), st.integers(0, MAX_CORE_ID - 64), st.integers(1, 64)
)


@given(runs)
def test_format_then_parse_is_identity(ids):
    assert parse_core_set(format_core_set(ids)) == ids


@given(runs, st.data())
def test_any_comma_spelling_of_a_run_parses_to_it(ids, data):
    # Cut the run into pieces at random places and spell each piece as an id or a range.
    cuts = sorted(data.draw(st.sets(st.integers(1, len(ids) - 1), max_size=5)) if len(ids) > 1 else set())
    pieces = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
    text = ",".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in pieces)
    assert parse_core_set(text) == ids
    assert CoreRange.parse(text) == CoreRange(ids[0], len(ids))


@given(st.integers(0, 512), st.integers(1, 8), st.integers(1, 8))
def test_split_gives_contiguous_equal_parts(start, size, parts):
    whole = CoreRange(start, size * parts)
    pieces = whole.split(parts)
    assert [c for piece in pieces for c in piece.ids] == list(whole.ids)
    assert {piece.count for piece in pieces} == {size}
