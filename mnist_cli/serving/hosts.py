"""Which Host headers `mnist serve` answers: its own names and addresses, and allowed_hosts, so that DNS
rebinding cannot reach a loopback server."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, FrozenSet

from omegaconf import DictConfig
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")  # Host names always answered: this machine's own


@dataclass(frozen=True)
class Hosts:
    """The Host header names the server answers to. A guard against DNS rebinding: a web page can point a name
    of its own at 127.0.0.1 and reach a loopback server from the user's browser, but its requests carry that name."""

    names: FrozenSet[str]  # as host_name writes them; "*": any
    any_address: (
        bool  # bound to every interface: the machine's addresses are not known, and an address cannot be rebound
    )

    def answers(self, name: str) -> bool:
        """Whether a request whose Host header names `name` (as host_name writes it) is answered."""
        return "*" in self.names or name in self.names or (self.any_address and is_address(name))


def host_name(host: str) -> str:
    """The name or address in a Host header or a host name given in the config: lower case, without its port,
    IPv6 brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def answered_hosts(cfg: DictConfig, bound: str) -> Hosts:
    """The Hosts of a server bound to address `bound` for host=cfg.host: localhost, host= and its address, and allowed_hosts."""
    names = frozenset(host_name(name) for name in (*LOCAL_NAMES, cfg.host, bound, *cfg.allowed_hosts))
    return Hosts(names, is_address(bound) and ipaddress.ip_address(bound).is_unspecified)


def host_guard(app: Any, hosts: Hosts) -> Any:
    """`app` answering only requests whose Host header names one of `hosts`; the others get 421 and one sentence."""

    async def guarded(scope, receive, send) -> None:
        name = host_name(Headers(scope=scope).get("host", "")) if scope["type"] == "http" else ""
        if scope["type"] != "http" or hosts.answers(name):
            await app(scope, receive, send)
            return
        error = (
            f"this server does not answer to the host name in the request's Host header ({name!r}); use localhost "
            f"or the server's address, or start it with allowed_hosts=[{name}]."
        )
        await JSONResponse({"error": error}, status_code=421)(scope, receive, send)

    return guarded
