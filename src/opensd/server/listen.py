"""The server's listening socket, bound before anything is set up or announced: a port in use, a
privileged port or an address that is not this machine's ends as one line naming the flag."""
from __future__ import annotations

import errno
import socket

from ..errors import InvalidArgument


def listen(host: str, port: int) -> socket.socket:
    if not 0 < port < 65536:
        raise InvalidArgument(f"port: {port} is outside 1..65535 (--port)")
    address = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not blocked by TIME_WAIT
        sock.bind((address, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise InvalidArgument(_why(e, host, port)) from None
    return sock


def _why(e: OSError, host: str, port: int) -> str:
    if isinstance(e, socket.gaierror):
        return f"host: {host!r} does not resolve to an address of this machine (--host)"
    if e.errno == errno.EADDRINUSE:
        return f"port: {port} on {host} is already in use (another server?); choose a free one with --port"
    if e.errno == errno.EACCES:
        return f"port: {port} needs administrator rights on this system; choose one above 1023 with --port"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"host: {host} is not an address of this machine (--host)"
    return f"port: cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port"
