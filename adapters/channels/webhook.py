"""Webhooks: a JSON POST signed per the Standard Webhooks spec (webhook-id, webhook-timestamp,
webhook-signature), refusing targets inside the network (SSRF) unless the operator allows them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from journey_engine.ports import Delivery, DeliveryResult

from ._http import TIMEOUT, header_key, missing_address, status_result, transport_result

EVENT_TYPE = "journey.message"
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookChannel:
    """POSTs each delivery to the URL in `delivery.to`. `secret` is a Standard Webhooks secret,
    `whsec_` followed by base64. With `allow_private=False` (the default) loopback, private,
    link-local and unique-local targets are refused, checking every address the host resolves to."""

    name: str = "webhook"

    def __init__(self, *, secret: str, allow_private: bool = False, client: httpx.Client | None = None,
                 clock: Callable[[], datetime] = _now) -> None:
        self.key = secret_key(secret)
        self.allow_private = allow_private
        # No redirects: a redirect could lead past the address check. No proxies from the environment:
        # the connection goes to the address that was checked.
        self.client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False)
        self.clock = clock

    def send(self, delivery: Delivery) -> DeliveryResult:
        if not delivery.to:
            return missing_address("webhook", "URL")
        try:
            url = httpx.URL(delivery.to)
        except httpx.InvalidURL as exc:
            return DeliveryResult(status="failed", detail=f"not a URL: {exc}")
        if url.scheme not in ("http", "https") or not url.host:
            return DeliveryResult(status="failed", detail=f"not an http(s) URL: {delivery.to}")
        try:
            addresses = resolve(url)
        except OSError as exc:  # DNS can fail for a while; a name that never resolves ends as a dead letter
            return DeliveryResult(status="retry", detail=f"cannot resolve {url.host}: {exc}")
        if not self.allow_private and (why := refusal(addresses)):
            return DeliveryResult(status="failed", detail=f"refused {url.host}: {why} (allow_private is off)")
        body, headers = self.signed(delivery)
        return self._post(url, addresses, body, headers)

    def signed(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        """The JSON body and the Standard Webhooks headers that sign it."""
        now = self.clock()
        body = json.dumps(payload(delivery, now), separators=(",", ":"), ensure_ascii=False, default=str)
        msg_id, timestamp = header_key(delivery.key), str(int(now.timestamp()))
        return body.encode(), {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + signature(self.key, msg_id, timestamp, body),
        }

    def _post(self, url: httpx.URL, addresses: list[str], body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Connect to a checked address (not to whatever the name resolves to a moment later: DNS
        rebinding), trying the next one only when nothing was sent yet."""
        error: httpx.HTTPError = httpx.ConnectError(f"{url.host} has no address")
        for address in addresses:
            try:
                response = self.client.post(url.copy_with(host=address), content=body,
                                            headers={**headers, "host": url.netloc.decode("ascii")},
                                            extensions=_sni(url))
            except httpx.ConnectError as exc:
                error = exc
                continue
            except httpx.HTTPError as exc:
                return transport_result(exc)
            except httpx.InvalidURL as exc:  # an address httpx cannot put in a URL (an IPv6 zone, ...)
                return DeliveryResult(status="failed", detail=f"cannot call {address}: {exc}")
            return status_result(response)
        return transport_result(error)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"WebhookChannel(allow_private={self.allow_private})"


def payload(delivery: Delivery, now: datetime) -> dict[str, Any]:
    return {"type": EVENT_TYPE, "key": delivery.key, "user": delivery.user, "journey": delivery.journey,
            "message": delivery.message, "title": delivery.title, "body": delivery.body, "url": delivery.url,
            "data": delivery.data, "timestamp": now.astimezone(UTC).isoformat().replace("+00:00", "Z")}


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as in the reference libraries)."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(key: bytes, msg_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def resolve(url: httpx.URL) -> list[str]:
    """Every address the URL's host stands for, in the resolver's order, without repeats."""
    port = url.port or (443 if url.scheme == "https" else 80)
    infos = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(addresses: list[str]) -> str | None:
    """Why one of `addresses` may not be called from inside the network, or None when all are public."""
    for address in addresses:
        ip = ipaddress.ip_address(address.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        for test, kind in _REFUSED:
            if test(ip):
                return f"{address} is {kind}"
    return None


_REFUSED: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda ip: ip.is_unspecified, "the unspecified address"),  # 0.0.0.0 reaches this host on Linux
    (lambda ip: ip.is_loopback, "a loopback address"),
    (lambda ip: ip.is_link_local, "a link-local address"),
    (lambda ip: ip in _UNIQUE_LOCAL, "a unique-local IPv6 address"),
    (lambda ip: ip.is_private, "a private address"),
    (lambda ip: ip.is_multicast, "a multicast address"),
    (lambda ip: not ip.is_global, "not a public address"),  # shared (100.64/10), reserved, documentation
)


def _sni(url: httpx.URL) -> dict[str, Any]:
    """TLS still names (and verifies) the host, although the connection goes to an address."""
    return {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
