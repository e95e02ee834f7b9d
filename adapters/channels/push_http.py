"""Push notifications through the Firebase Cloud Messaging HTTP v1 API (or a compatible server):
one POST to /v1/projects/{project}/messages:send per device token."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx

from journey_engine.ports import Delivery, DeliveryResult

from ._http import TIMEOUT, json_object, missing_address, status_result, transport_result

DEFAULT_URL = "https://fcm.googleapis.com"


class FcmPushChannel:
    """Sends a notification (title, body) to the device token in `delivery.to`, with the journey,
    message, idempotency key and URL as string data for the app.

    `access_token` is used as it is. Production FCM needs a short-lived OAuth 2.0 token minted from a
    service account (google-auth, scope firebase.messaging) and refreshed before it expires; a static
    token suits a compatible server or a token refreshed by something outside the engine."""

    name: str = "push"

    def __init__(self, *, project: str, access_token: str, base_url: str = DEFAULT_URL,
                 client: httpx.Client | None = None) -> None:
        self.project = project
        self.url = f"{base_url.rstrip('/')}/v1/projects/{quote(project, safe='')}/messages:send"
        self.headers = {"authorization": f"Bearer {access_token}"}
        self.client = client or httpx.Client(timeout=TIMEOUT)

    def send(self, delivery: Delivery) -> DeliveryResult:
        if not delivery.to:
            return missing_address("push", "device token")
        try:
            response = self.client.post(self.url, json=fcm_message(delivery), headers=self.headers)
        except httpx.HTTPError as exc:
            return transport_result(exc)
        return fcm_result(response)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"FcmPushChannel(url={self.url!r})"


def fcm_message(delivery: Delivery) -> dict[str, Any]:
    """The v1 request body. FCM has no idempotency key, so the key travels in `data` for the app to
    drop a notification it has already shown; data values must be strings."""
    data = {"key": delivery.key, "journey": delivery.journey, "message": delivery.message, "url": delivery.url}
    notification = {"title": delivery.title or delivery.subject or "", "body": delivery.body}
    return {"message": {"token": delivery.to, "notification": notification,
                        "data": {name: value for name, value in data.items() if value is not None}}}


def fcm_result(response: httpx.Response) -> DeliveryResult:
    """An UNREGISTERED token (FCM's 404 NOT_FOUND) belongs to an app that was uninstalled: never send to
    it again. A 404 without FCM's error body is a wrong URL, not a dead token, and suppresses nothing."""
    error = _error(response)
    result = status_result(response, provider_id=json_object(response).get("name"))
    unregistered = "UNREGISTERED" in error.get("codes", ()) or (
        response.status_code == 404 and error.get("status") == "NOT_FOUND")
    if unregistered:
        return replace(result, status="failed", suppress_address=True)
    if error.get("message"):
        return replace(result, detail=f"HTTP {response.status_code} {error.get('status', '')}: {error['message']}")
    return result


def _error(response: httpx.Response) -> dict[str, Any]:
    """`status`, `message` and the FcmError `codes` of an error answer, as far as it has them."""
    error = json_object(response).get("error")
    if not isinstance(error, dict):
        return {}
    details = error.get("details")
    codes = [d.get("errorCode") for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    return {"status": error.get("status"), "message": error.get("message"), "codes": codes}

