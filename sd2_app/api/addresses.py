"""The network address a request comes from, for the per-address limits: GPU jobs (`sd2_app.api.job_admission`,
counted across the web UI's queue and the A1111 API) and uploads (`sd2_app.ui.upload_budget`).

A visitor cookie is worth nothing against a client that drops cookies: each of its requests is a new visitor.
The address it connects from is what such a client cannot change per request, so the queue also counts jobs
per address. Which address that is depends on what stands between the client and this server:

- Connected directly, it is the socket peer. uvicorn (which Gradio runs) already replaces a loopback peer by
  the last untrusted entry of X-Forwarded-For (uvicorn/middleware/proxy_headers.py, `ProxyHeadersMiddleware`,
  trusting `FORWARDED_ALLOW_IPS`, default 127.0.0.1 and ::1), so a proxy on the same host is handled there.
- Behind reverse proxies on other hosts (a Hugging Face Space, nginx in another container), the peer is the
  nearest proxy, the same for everyone. Only when the operator says how many trusted proxies stand in front
  (`trusted_hops`; on a Space, one) does the address come from X-Forwarded-For, and then from the entry the
  outermost trusted proxy appended: the `trusted_hops`-th from the right, since each proxy appends the peer it
  saw. Entries left of it were written by the client and prove nothing (uvicorn reads the header from the
  right for the same reason; MDN "X-Forwarded-For", "Selecting an IP address").

IPv6 clients are counted per /64 network: one home or phone usually gets a whole /64, so counting single
IPv6 addresses would let one client take as many queue places as it likes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

FORWARDED_FOR = "x-forwarded-for"
IPV6_NETWORK_BITS = 64  # one subscriber's IPv6 network (RFC 6177): counted as one address
UNKNOWN = "unknown"  # a request without a usable address: all such requests share one count


def starlette_request(request: Any) -> Any:
    """The Starlette request of a gr.Request (which wraps it), or `request` itself."""
    return getattr(request, "request", None) or request


def network_key(host: str | None) -> str | None:
    """The count an address falls under: the IPv4 address, or the /64 network of an IPv6 one (an IPv4
    address mapped into IPv6 counts as the IPv4 address); None when `host` is not an IP address."""
    try:
        address = ipaddress.ip_address((host or "").strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_NETWORK_BITS), strict=False))
    return str(address)


def _forwarded_by_proxies(request: Any, hops: int) -> str | None:
    """The X-Forwarded-For entry that `hops` trusted proxies put there: the `hops`-th from the right, or the
    first when there are fewer (then every entry is a proxy's). Several headers read as one list, in order."""
    headers = getattr(request, "headers", None)
    if headers is None or not hasattr(headers, "getlist"):
        return None
    entries = [entry.strip() for value in headers.getlist(FORWARDED_FOR) for entry in value.split(",")]
    return entries[max(len(entries) - hops, 0)] or None if entries else None


def _without_port(entry: str) -> str:
    """'203.0.113.7:4711' -> '203.0.113.7', '[2001:db8::1]:4711' -> '2001:db8::1'; anything else as it is."""
    if entry.startswith("[") and "]" in entry:
        return entry[1:entry.index("]")]
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


@dataclass(frozen=True)
class ClientAddresses:
    """Names the network a request comes from; `trusted_hops`: how many trusted reverse proxies stand in front
    of the app, each appending to X-Forwarded-For (0: none, the header is ignored)."""

    trusted_hops: int = 0

    def host_of(self, request: Any) -> str | None:
        """The client's own address as a gr.Request or a Starlette request names it (before `network_key`): the
        X-Forwarded-For entry of the outermost trusted proxy when that is an IP address, else the socket peer."""
        raw = starlette_request(request)
        if self.trusted_hops > 0:
            forwarded = _forwarded_by_proxies(raw, self.trusted_hops)
            host = _without_port(forwarded) if forwarded else None
            if network_key(host) is not None:
                return host
        client = getattr(raw, "client", None)
        return getattr(client, "host", None)

    def of(self, request: Any) -> str:
        """The address key of a gr.Request or a Starlette request (see the module docstring)."""
        return network_key(self.host_of(request)) or UNKNOWN
