"""Free and busy loopback ports."""

from __future__ import annotations

import errno
import socket

from serve.triton.errors import PortInUseError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUseError` if something listens on ``port``. ``SO_REUSEADDR`` as the servers use it:
    connections of a dead server lingering in TIME_WAIT do not make the port busy (a restart on the same
    ports right after a crash must work), a listening socket does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"port {host}:{port} is already in use") from exc
            raise
