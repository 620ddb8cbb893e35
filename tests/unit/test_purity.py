"""The clock checker `make lint` runs on placement/ (neuronplace.local.purity): it flags every way of
reading the clock, however imported, and passes code that only handles times it was given."""

from __future__ import annotations

import pytest

from neuronplace.local.purity import main

READS = [
    ("import time\nx = time.time()\n", "time.time"),
    ("import time\nx = time.time_ns()\n", "time.time_ns"),
    ("import time as t\nx = t.monotonic()\n", "time.monotonic"),
    ("from time import monotonic_ns\nx = monotonic_ns()\n", "time.monotonic_ns"),
    ("from time import perf_counter as tick\nx = tick()\n", "time.perf_counter"),
    ("from time import time\nx = time()\n", "time.time"),
    ("import datetime\nx = datetime.datetime.now()\n", "datetime.datetime.now"),
    ("import datetime as dt\nx = dt.datetime.now(dt.UTC)\n", "datetime.datetime.now"),
    ("import datetime as dt\nx = dt.datetime.utcnow()\n", "datetime.datetime.utcnow"),
    ("from datetime import datetime\nx = datetime.now()\n", "datetime.datetime.now"),
    ("from datetime import date\nx = date.today()\n", "datetime.date.today"),
    ("import datetime as dt\nx = dt.date.today()\n", "datetime.date.today"),
    # Not called here, but handed on to be called later: a clock read all the same.
    ("import datetime as dt\ndef f(clock=dt.datetime.now): ...\n", "datetime.datetime.now"),
]

CLEAN = """
import datetime as dt
import time
from datetime import datetime


def stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text) + dt.timedelta(seconds=1)


def wait(seconds: float) -> None:
    time.sleep(seconds)


NEVER = dt.datetime.max
"""


@pytest.mark.parametrize(("source", "clock"), READS)
def test_each_way_of_reading_the_clock_is_flagged(tmp_path, capsys, source, clock):
    path = tmp_path / "decide.py"
    path.write_text(source)
    assert main([str(path)]) == 1
    assert capsys.readouterr().out == f"{path}:2: {clock} reads the clock; take the time as an argument\n"


def test_code_given_the_time_passes(tmp_path, capsys):
    path = tmp_path / "decide.py"
    path.write_text(CLEAN)
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == ""


def test_a_folder_is_checked_file_by_file(tmp_path, capsys):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "clean.py").write_text(CLEAN)
    (tmp_path / "pkg" / "sub" / "late.py").write_text("import time\n\n\ndef f():\n    return time.time()\n")
    assert main([str(tmp_path / "pkg")]) == 1
    late = tmp_path / "pkg" / "sub" / "late.py"
    assert capsys.readouterr().out == f"{late}:5: time.time reads the clock; take the time as an argument\n"
