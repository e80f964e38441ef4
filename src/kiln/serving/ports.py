"""Ports a server is about to listen on: checked free before it starts, and when one is taken, the process
holding it named (a Triton server left behind by a kiln that was killed holds both of its ports)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from kiln.errors import KilnError, clip

LISTEN = "0A"  # the TCP state column of /proc/net/tcp for a listening socket


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address, IPv4 or IPv6) in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # not Linux, or no IPv6
        for row in rows:
            # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            fields = row.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                found.add(fields[9])
    return found


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command line) of a process listening on TCP ``port``, found through /proc/net/tcp{,6} and the
    socket links in /proc/*/fd; None when it cannot be told (another user's process, not Linux)."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not targets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in targets for fd in (proc / "fd").iterdir()):
                return int(proc.name), _command(proc)
        except OSError:  # it exited meanwhile, or is not ours to look at
            continue
    return None


def _command(proc: Path) -> str:
    """A process's command line on one short line: its program's name, then its arguments."""
    argv = (proc / "cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    words = " ".join([Path(argv[0]).name, *argv[1:]]).split()  # `python -c '...'` may hold newlines
    return clip(" ".join(words), 80)


def check_free(host: str, port: int, option: str) -> None:
    """Refuse, naming the holder, a ``port`` that another process listens on (bind it, then let it go)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise KilnError(f"--host {host}: not an address this machine has ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        # SO_REUSEADDR: a port whose last connections linger in TIME_WAIT is free; a listening one is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise KilnError(f"--host {host}: cannot listen there ({e.strerror})") from None
            owner = port_owner(port)
            if owner is None:
                raise KilnError(
                    f"{option} {port} is in use by another process; choose another {option}"
                ) from None
            pid, command = owner
            raise KilnError(
                f"{option} {port} is in use by pid {pid} ({command}); stop it (kill {pid}) or choose "
                f"another {option}"
            ) from None
