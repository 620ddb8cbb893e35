"""The chart README and the docs' Helm values page are generated from values.yaml's comments
(neuronplace.local.chart_docs), and a changed comment makes the committed files stale."""

from __future__ import annotations

import subprocess
import sys

from neuronplace.local import chart_docs


def test_committed_files_are_the_generated_ones():
    for path, text in chart_docs.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run `{chart_docs.COMMAND}`"


def test_check_mode_passes_on_the_committed_files():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.local.chart_docs", "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_every_documented_value_has_a_row_and_a_documented_maps_keys_do_not():
    text = (chart_docs.CHART / "values.yaml").read_text()
    keys = [value.key for value in chart_docs.documented_values(text)]
    assert len(keys) == text.count("# --") == len(set(keys))
    assert {"image.repository", "image.digest", "operator.binding", "resources", "livenessProbe.periodSeconds"} <= set(
        keys
    )
    assert "resources.requests.cpu" not in keys and "image" not in keys


def test_rows_carry_type_default_and_the_whole_comment():
    text = """\
top:
  # -- First line of the comment,
  #    and its continuation.
  count: 3
  # -- A map documented as a whole.
  limits:
    memory: 1Gi
flag: false
"""
    values = chart_docs.documented_values(text)
    assert [(v.key, v.type, v.default, v.description) for v in values] == [
        ("top.count", "int", 3, "First line of the comment, and its continuation."),
        ("top.limits", "object", {"memory": "1Gi"}, "A map documented as a whole."),
    ]
    assert '| `top.limits` | object | `{"memory": "1Gi"}` | A map documented as a whole. |' in chart_docs.table(values)


def test_a_changed_comment_makes_the_committed_readme_stale(monkeypatch, tmp_path):
    """The drift check can fail: edit one comment in a copy of values.yaml and the README differs."""
    values = (chart_docs.CHART / "values.yaml").read_text()
    edited = values.replace("# -- Seconds between probes.", "# -- Seconds between two probes.")
    assert edited != values
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "values.yaml").write_text(edited)
    monkeypatch.setattr(chart_docs, "CHART", chart)
    rendered = chart_docs.render_chart_readme()
    assert rendered != chart_docs.CHART_README.read_text()
    assert "| `livenessProbe.periodSeconds` | int | `15` | Seconds between two probes. |" in rendered
