"""The test helper that reads PromQL selectors (tests/support/promql.py): what the chart's
dashboard and alert checks rely on."""

import pytest

from support.promql import Selector, parse


def test_selectors_matchers_and_grouping_labels():
    selectors, grouping = parse(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="1", y=~"$v"}[$__rate_interval])))'
        ' > on(z) group_left(w) max without (q) (b offset 1h30m) and absent(c{n!="2"})'
    )
    assert selectors == [
        Selector("a_bucket", frozenset({"x", "y"})),
        Selector("b", frozenset()),
        Selector("c", frozenset({"n"})),
    ]
    assert grouping == {"le", "z", "w", "q"}


@pytest.mark.parametrize("bad", ['{__name__="a"}', "a{x=1}", "a # b"])
def test_what_it_cannot_read_is_an_error(bad):
    with pytest.raises(ValueError):
        parse(bad)
