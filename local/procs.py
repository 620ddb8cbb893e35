"""Linux process and socket facts read straight from /proc (no third-party dependency).

The local control plane's components are separate processes that kwokctl forks into their own
sessions; tearing a cluster down is only proven by looking at the kernel's view: no live process
with one of the cluster's pids and no socket still listening on one of its ports.
"""

from __future__ import annotations

import os
from pathlib import Path

_TCP_LISTEN = "0A"


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    state = stat[stat.rindex(")") + 2]
    return state not in "ZX"


def command_line(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (part.decode(errors="replace").partition("=") for part in raw.split(b"\0") if part)
    return {key: value for key, _, value in pairs}


def working_dir(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except (FileNotFoundError, PermissionError):
        pass
    return inodes


def _listening() -> list[tuple[int, str]]:
    """(port, socket inode) of every listening TCP socket on the machine."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _TCP_LISTEN:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return found


def listening_ports(pids: list[int] | None = None) -> set[int]:
    """TCP ports in LISTEN state, restricted to sockets owned by ``pids`` when given."""
    listening = _listening()
    if pids is None:
        return {port for port, _ in listening}
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    return {port for port, inode in listening if inode in inodes}


def port_owners(ports: set[int]) -> dict[int, list[tuple[int, str]]]:
    """For each of ``ports`` that is listening: the (pid, command line) of the processes holding it."""
    inodes = {inode: port for port, inode in _listening() if port in ports}
    owners: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        held = _socket_inodes(int(entry)) & inodes.keys()
        for inode in held:
            owners.setdefault(inodes[inode], []).append((int(entry), " ".join(command_line(int(entry)))))
    return owners


def ports_held_by(ports: set[int], marker: str) -> dict[int, list[tuple[int, str]]]:
    """Which of ``ports`` still listen in a process whose command line contains ``marker`` (a
    cluster's name): a freed port another program took since is not held by what ``marker`` names."""
    owners = port_owners(ports & listening_ports())
    return {port: held for port, held in owners.items() if any(marker in command for _, command in held)}
