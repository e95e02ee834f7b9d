"""The in-app channel. In-app messages live in the store's outbox and users read them through
`GET /v1/users/{id}/inbox`; there is no provider to call, so handing one over is all it takes."""

from __future__ import annotations

from journey_engine.ports import Delivery, DeliveryResult


class InAppChannel:
    """Marks an in-app message delivered: from then on it is in the user's inbox. Reading it
    (`POST /v1/users/{id}/inbox/{msg}/read`) is the API's business, not the channel's."""

    name: str = "in_app"

    def send(self, delivery: Delivery) -> DeliveryResult:
        return DeliveryResult(status="delivered", detail="kept in the user's inbox")
