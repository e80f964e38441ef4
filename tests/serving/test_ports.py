"""A port another process listens on is refused with the holder's pid and command, from /proc."""

from __future__ import annotations

import os
import socket

import pytest

from kiln.errors import KilnError
from kiln.serving.ports import check_free, port_owner
from kiln.serving.server import free_port


def listening(family: socket.AddressFamily, host: str) -> socket.socket:
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen()
    return s


def test_a_free_port_passes() -> None:
    check_free("127.0.0.1", free_port(), "--http-port")


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")])
def test_the_listener_is_found_by_pid_in_either_table(family: socket.AddressFamily, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with listening(family, host) as s:
        owner = port_owner(s.getsockname()[1])
    assert owner is not None
    assert owner[0] == os.getpid()


def test_a_held_port_is_refused_naming_the_holder_on_one_line() -> None:
    with listening(socket.AF_INET, "127.0.0.1") as s:
        port = s.getsockname()[1]
        with pytest.raises(KilnError) as e:
            check_free("127.0.0.1", port, "--http-port")
    me = os.getpid()
    assert str(e.value).startswith(f"--http-port {port} is in use by pid {me} (python")
    assert str(e.value).endswith(f"); stop it (kill {me}) or choose another --http-port")
    assert "\n" not in str(e.value)


def test_a_port_nothing_listens_on_has_no_owner() -> None:
    assert port_owner(free_port()) is None


def test_an_unknown_host_is_named() -> None:
    with pytest.raises(KilnError, match="--host no-such-host.invalid: not an address this machine has"):
        check_free("no-such-host.invalid", free_port(), "--http-port")
