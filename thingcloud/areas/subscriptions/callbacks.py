"""Calling subscribers' callback URLs safely: the URL policy, and the guarded HTTP POST.

A callback URL is chosen by a client, so posting to it is a server-side request forgery risk. Two
checks guard it:

* on create (``check_callback_url``): HTTPS (``http://`` only on loopback with
  ``allow_insecure_callbacks``), the registrable domain of the application's redirect URL, and a
  host that does not resolve to a private, loopback, link-local or otherwise internal address;
* on every connection (``GuardedBackend``): the host is resolved again and each address checked
  just before connecting to that very address, so a name that answered a public address at create
  time and a private one later (DNS rebinding) is refused. The TLS handshake still names the
  original host (SNI and certificate check), because httpcore passes it to ``start_tls`` itself.

The POST has an overall timeout, follows no redirects (a 3xx is a failed delivery) and reads at most
``notification_max_body`` bytes of the answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from thingcloud.errors import ValidationFailed
from thingcloud.settings import Settings

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """The callback's address is not one ThingCloud may connect to (SSRF guard)."""


class CallbackFailed(Exception):
    """The callback could not be reached or did not answer 2xx."""


async def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` (an IP literal resolves to itself)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: str, allow_loopback: bool) -> str | None:
    """Why ThingCloud must not connect to ``address``, or None when it may."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "a non-public address"
    return None


def check_addresses(host: str, addresses: Iterable[str], allow_loopback: bool) -> None:
    found = False
    for address in addresses:
        found = True
        reason = refusal(address, allow_loopback)
        if reason is not None:
            raise CallbackRefused(f"{host} resolves to {reason} ({address})")
    if not found:
        raise CallbackRefused(f"{host} does not resolve")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the SSRF check between name resolution and connect."""

    def __init__(self, allow_loopback: bool, resolver: Resolver | None = None) -> None:
        self.allow_loopback = allow_loopback
        self.resolver = resolver or resolve
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            raise CallbackFailed(f"{host} does not resolve: {exc}") from exc
        check_addresses(host, addresses, self.allow_loopback)
        error: Exception | None = None
        for address in addresses:  # connect to the checked address itself, never the name
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise CallbackFailed(f"cannot connect to {host}:{port}: {error}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise CallbackRefused("unix sockets are not callbacks")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@dataclass(frozen=True)
class CallbackAnswer:
    status: int
    body: bytes


async def post(
    settings: Settings,
    url: str,
    body: bytes,
    headers: dict[str, str],
    resolver: Resolver | None = None,
) -> CallbackAnswer:
    """POST ``body`` to ``url`` once; raises ``CallbackRefused``/``CallbackFailed`` unless 2xx.

    A pool per call: nothing is shared between subscribers, so one slow endpoint holds no
    connection another one waits for."""
    timeout = settings.notification_timeout
    backend = GuardedBackend(settings.allow_insecure_callbacks, resolver)
    request_headers = [(k.encode(), v.encode()) for k, v in {**headers, "User-Agent": "ThingCloud"}.items()]
    limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    try:
        async with (
            asyncio.timeout(timeout),
            httpcore.AsyncConnectionPool(network_backend=backend, retries=0) as pool,
            pool.stream(
                "POST", url, headers=request_headers, content=body, extensions={"timeout": limits}
            ) as response,
        ):
            received = bytearray()
            async for chunk in response.aiter_stream():
                received += chunk[: settings.notification_max_body - len(received)]
                if len(received) >= settings.notification_max_body:
                    break  # a huge answer is not read to its end
            answer = CallbackAnswer(response.status, bytes(received))
    except (CallbackRefused, CallbackFailed):
        raise
    except TimeoutError as exc:
        raise CallbackFailed(f"no answer within {timeout:g} s") from exc
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise CallbackFailed(f"{type(exc).__name__}: {exc}") from exc
    except httpcore.UnsupportedProtocol as exc:
        raise CallbackRefused(str(exc)) from exc
    if not 200 <= answer.status < 300:
        # Redirects are not followed: the callback URL is the one the application registered.
        raise CallbackFailed(f"callback answered {answer.status}")
    return answer


# --- The policy checked when a subscription is created ----------------------------------------------


def registrable_domain(host: str) -> str:
    """The top two labels of a host name (REFERENCE.md §3.10); an IP literal or one-label name as is."""
    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return str(ip)
    except ValueError:
        return ".".join(host.split(".")[-2:])


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def check_callback_url(
    settings: Settings, url: str, redirect_uris: list[str], resolver: Resolver | None = None
) -> None:
    """400 unless ``url`` is a callback ThingCloud may call for an application with these redirects."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed.field("callbackUrl", message)

    if parts.scheme not in ("https", "http") or not host:
        raise refuse("callbackUrl must be an absolute HTTPS URL")
    if parts.username is not None or parts.password is not None:
        raise refuse("callbackUrl must not contain credentials")
    if parts.scheme == "http" and not (settings.allow_insecure_callbacks and _is_loopback_host(host)):
        raise refuse("callbackUrl must use HTTPS")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise refuse("callbackUrl has an invalid port") from exc
    domains = {registrable_domain(urlsplit(r).hostname or "") for r in redirect_uris if urlsplit(r).hostname}
    if registrable_domain(host) not in domains:
        raise refuse("callbackUrl must be in the domain of the application's redirect URL")
    try:
        addresses = await (resolver or resolve)(host, port)
        check_addresses(host, addresses, settings.allow_insecure_callbacks)
    except CallbackRefused as exc:
        raise refuse(f"callbackUrl is not allowed: {exc}") from exc
    except OSError as exc:
        raise refuse(f"callbackUrl host cannot be resolved: {host}") from exc
