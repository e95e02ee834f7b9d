"""SMS through the Twilio Messages API, or any provider that speaks its request format: a form POST
to /2010-04-01/Accounts/{sid}/Messages.json with HTTP Basic auth and an idempotency token."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

import httpx

from journey_engine.ports import Delivery, DeliveryResult

from ._http import TIMEOUT, header_key, json_object, missing_address, status_result, transport_result

DEFAULT_URL = "https://api.twilio.com"
# Twilio error codes that are about the number itself: invalid, not a mobile, or the user texted STOP.
SUPPRESS_CODES = frozenset({21211, 21610, 21614})


class TwilioSmsChannel:
    """Sends `delivery.body` to the phone number in `delivery.to` from `sender`, a phone number or a
    Messaging Service SID (`MG...`). `base_url` points it at another Twilio-compatible provider."""

    name: str = "sms"

    def __init__(self, *, account_sid: str, auth_token: str, sender: str, base_url: str = DEFAULT_URL,
                 client: httpx.Client | None = None) -> None:
        self.account_sid, self.sender = account_sid, sender
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"
        self.auth = httpx.BasicAuth(account_sid, auth_token)
        self.client = client or httpx.Client(timeout=TIMEOUT)

    def send(self, delivery: Delivery) -> DeliveryResult:
        if not delivery.to:
            return missing_address("sms", "phone number")
        form = {"To": delivery.to, self._sender_field(): self.sender, "Body": delivery.body}
        try:
            response = self.client.post(self.url, data=form, auth=self.auth,
                                        headers={"I-Twilio-Idempotency-Token": header_key(delivery.key)})
        except httpx.HTTPError as exc:
            return transport_result(exc)
        return twilio_result(response)

    def _sender_field(self) -> str:
        return "MessagingServiceSid" if self.sender.startswith("MG") and len(self.sender) == 34 else "From"

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"TwilioSmsChannel(url={self.url!r}, sender={self.sender!r})"


def twilio_result(response: httpx.Response) -> DeliveryResult:
    """The message SID on success; on a refusal, Twilio's error code and whether it condemns the number."""
    answer = json_object(response)
    result = status_result(response, provider_id=answer.get("sid"))
    if result.status != "failed":
        return result
    code = answer.get("code")
    detail = f"HTTP {response.status_code} Twilio {code}: {answer.get('message', '')}" if code else result.detail
    return replace(result, detail=detail, suppress_address=code in SUPPRESS_CODES)

