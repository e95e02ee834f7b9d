"""What the HTTP channels share: timeouts, the mapping of HTTP answers to delivery results, and an
idempotency key that is safe to put in a header."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from journey_engine.ports import DeliveryResult

# Connecting should be quick; a provider that accepted the request may take longer to answer.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)

_RETRY_STATUSES = frozenset({408, 425, 429})


def header_key(key: str) -> str:
    """`key` itself when it can travel in an HTTP header; otherwise a stable digest of it (user ids
    may hold any character, and a header may not)."""
    if key.isascii() and key.isprintable() and len(key) <= 200:
        return key
    return "sha256_" + hashlib.sha256(key.encode()).hexdigest()


def status_result(response: httpx.Response, *, provider_id: str | None = None) -> DeliveryResult:
    """2xx delivered; 408/425/429 and 5xx retry (the provider may accept it later); anything else
    failed, redirects included: a provider that moved must be reconfigured, not followed."""
    code = response.status_code
    if 200 <= code < 300:
        return DeliveryResult(status="delivered", detail=f"HTTP {code}", provider_id=provider_id)
    status = "retry" if code in _RETRY_STATUSES or code >= 500 else "failed"
    return DeliveryResult(status=status, detail=f"HTTP {code}: {snippet(response)}")


def snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of a response body, on one line, for a result's detail."""
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def transport_result(exc: httpx.HTTPError) -> DeliveryResult:
    """A request that got no answer (refused, reset, timed out) is worth another try."""
    return DeliveryResult(status="retry", detail=f"{type(exc).__name__}: {str(exc) or 'no answer'}")


def missing_address(channel: str, what: str) -> DeliveryResult:
    return DeliveryResult(status="failed", detail=f"{channel}: the delivery has no {what}")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or an empty one when it has none (a proxy's HTML error page, ...)."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
