"""Channel adapters: one module per delivery technology, each behind the `Channel` port of
`journey_engine.ports`. `build_channels` wires them from the environment."""

from .console import ConsoleChannel
from .email_smtp import SmtpChannel
from .in_app import InAppChannel
from .push_http import FcmPushChannel
from .settings import ChannelConfigError, ChannelSettings, build_channels
from .sms_http import TwilioSmsChannel
from .webhook import WebhookChannel

__all__ = [
    "ChannelConfigError",
    "ChannelSettings",
    "ConsoleChannel",
    "FcmPushChannel",
    "InAppChannel",
    "SmtpChannel",
    "TwilioSmsChannel",
    "WebhookChannel",
    "build_channels",
]
