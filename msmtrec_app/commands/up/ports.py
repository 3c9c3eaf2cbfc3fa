"""The ports and URLs of the services ``msmtrec up`` starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from msmtrec_app.commands.up.common import UpError

DEFAULT_PORTS = {"grpc": 50051, "status": 8081, "gateway": 8080}


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds) ``host:port``. SO_REUSEADDR as the services
    use it, so a socket in TIME_WAIT from a previous run does not count as busy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_ports(host: str, requested: dict[str, int | None], notes: list[str]) -> dict[str, int]:
    """Port per service. A default port that is busy falls back to a free one (with a note);
    a port the user asked for that is busy is an error, because silently moving it would
    break whatever expects it there."""
    ports: dict[str, int] = {}
    for name, value in requested.items():
        if value == 0:
            port = free_port(host)
        elif value is None:
            port = DEFAULT_PORTS[name]
            if port_in_use(host, port) or port in ports.values():
                fallback = free_port(host)
                notes.append(f"port {port} ({name}) is busy on {host}; using {fallback}")
                port = fallback
        else:
            if port_in_use(host, value):
                raise UpError(
                    f"port {value} (--{name}-port) is already in use on {host}: stop what "
                    f"listens there, or pass another port (0 picks a free one)"
                )
            port = value
        if port in ports.values():
            raise UpError(f"port {port} is given to two services; use distinct ports")
        ports[name] = port
    return ports


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass
class Endpoints:
    host: str
    ports: dict[str, int]

    @property
    def grpc(self) -> str:
        return f"{url_host(self.host)}:{self.ports['grpc']}"

    @property
    def status(self) -> str:
        return f"http://{url_host(self.host)}:{self.ports['status']}"

    @property
    def gateway(self) -> str:
        return f"http://{url_host(self.host)}:{self.ports['gateway']}"
