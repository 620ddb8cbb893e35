"""A process's CPU time and memory, read from ``/proc`` (Linux, like the local control plane)."""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``: resident now, ``VmHWM``: peak resident since
    the process started); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process itself (not its children) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
