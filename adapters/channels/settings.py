"""Channel settings from the environment (and the `[channels]` table of the TOML file named by
JOURNEY_SETTINGS), and the channels they make. Journey files never hold provider settings: they
are written by marketers and reviewed as content, and credentials do not belong there."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from journey_engine.errors import JourneyError, did_you_mean
from journey_engine.ports import Channel

from .console import ConsoleChannel
from .email_smtp import SmtpChannel
from .in_app import InAppChannel
from .push_http import DEFAULT_URL as FCM_URL
from .push_http import FcmPushChannel
from .sms_http import DEFAULT_URL as TWILIO_URL
from .sms_http import TwilioSmsChannel
from .webhook import WebhookChannel

log = logging.getLogger("journey.channels")

_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
_UNSUBSCRIBE_SCHEMES = ("mailto:", "https:", "http:")


class ChannelConfigError(JourneyError, ValueError):
    """Channel settings that cannot work: half a provider's settings, a malformed URL or secret."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    """Every provider setting. Each field is read from `JOURNEY_<FIELD>` (JOURNEY_SMTP_URL, ...), else
    from the key of the same name in the settings file's `[channels]` table; the environment wins.
    `unsubscribe_url` is one URL or several separated by commas (a TOML list in the file)."""

    smtp_url: str | None = field(default=None, repr=False)  # smtp://user:pass@host:port?starttls=1
    email_from: str | None = None
    unsubscribe_url: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)  # whsec_<base64>
    webhook_allow_private: bool = False
    twilio_url: str | None = None
    twilio_sid: str | None = None
    twilio_token: str | None = field(default=None, repr=False)
    twilio_from: str | None = None
    fcm_url: str | None = None
    fcm_project: str | None = None
    fcm_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChannelSettings:
        env = os.environ if environ is None else environ
        values = _read_file(Path(env["JOURNEY_SETTINGS"])) if env.get("JOURNEY_SETTINGS") else {}
        for name in _names():
            if env.get(variable(name)):  # an empty variable is unset, as shells often leave them
                values[name] = env[variable(name)]
        coerced: dict[str, Any] = {name: _coerce(name, value) for name, value in values.items()}
        return cls(**coerced)


def variable(name: str) -> str:
    """The environment variable of a settings field."""
    return f"JOURNEY_{name.upper()}"


def _names() -> list[str]:
    return [f.name for f in fields(ChannelSettings)]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("channels", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ChannelConfigError(f"JOURNEY_SETTINGS={path}: {exc}") from exc
    if not isinstance(table, dict):
        raise ChannelConfigError(f"{path}: `channels` must be a table")
    for key in table:
        if key not in _names():
            raise ChannelConfigError(f"{path}: unknown channel setting `{key}`{did_you_mean(key, _names())}")
    return dict(table)


def _coerce(name: str, value: object) -> object:
    if name == "webhook_allow_private":
        return _boolean(name, value)
    if name == "unsubscribe_url":
        return _unsubscribe_urls(value)
    if not isinstance(value, str):
        raise ChannelConfigError(f"{variable(name)} must be a string, not {value!r}")
    return value.strip()


def _boolean(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ChannelConfigError(f"{variable(name)} must be 1/0, true/false, yes/no or on/off, not {value!r}")
    return text in _TRUE


def _unsubscribe_urls(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ChannelConfigError(f"JOURNEY_UNSUBSCRIBE_URL must be URLs, not {value!r}")
    urls = tuple(item.strip() for item in items if item.strip())
    for url in urls:
        if not url.startswith(_UNSUBSCRIBE_SCHEMES):
            raise ChannelConfigError(f"JOURNEY_UNSUBSCRIBE_URL: {url!r} is neither a mailto: nor an https: URL")
    return urls


def _needs(settings: ChannelSettings, channel: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
    """Whether a provider is configured: all of `required` set (True) or none of its settings (False);
    anything in between is a mistake worth stopping for rather than a silent fallback."""
    given = [name for name in required + optional if getattr(settings, name)]
    missing = [variable(name) for name in required if not getattr(settings, name)]
    if given and missing:
        raise ChannelConfigError(f"{channel} is half configured: set {', '.join(missing)} too "
                                 f"(or unset {', '.join(variable(name) for name in given)})")
    return bool(given)


def _smtp(settings: ChannelSettings) -> Channel | None:
    if not _needs(settings, "email", ("smtp_url", "email_from")):
        return None
    try:
        return SmtpChannel.from_url(settings.smtp_url or "", sender=settings.email_from or "",
                                    unsubscribe_urls=settings.unsubscribe_url)
    except ValueError as exc:
        raise ChannelConfigError(f"JOURNEY_SMTP_URL: {exc}") from exc


def _webhook(settings: ChannelSettings) -> Channel | None:
    if not _needs(settings, "webhook", ("webhook_secret",)):
        return None
    try:
        return WebhookChannel(secret=settings.webhook_secret or "", allow_private=settings.webhook_allow_private)
    except ValueError as exc:
        raise ChannelConfigError(f"JOURNEY_WEBHOOK_SECRET: {exc}") from exc


def _twilio(settings: ChannelSettings) -> Channel | None:
    if not _needs(settings, "sms", ("twilio_sid", "twilio_token", "twilio_from"), ("twilio_url",)):
        return None
    return TwilioSmsChannel(account_sid=settings.twilio_sid or "", auth_token=settings.twilio_token or "",
                            sender=settings.twilio_from or "", base_url=settings.twilio_url or TWILIO_URL)


def _fcm(settings: ChannelSettings) -> Channel | None:
    if not _needs(settings, "push", ("fcm_project", "fcm_token"), ("fcm_url",)):
        return None
    return FcmPushChannel(project=settings.fcm_project or "", access_token=settings.fcm_token or "",
                          base_url=settings.fcm_url or FCM_URL)


_BUILDERS: dict[str, Callable[[ChannelSettings], Channel | None]] = {
    "email": _smtp, "sms": _twilio, "push": _fcm, "webhook": _webhook,
}


def build_channels(settings: ChannelSettings, console_fallback: bool = True, *,
                   stream: TextIO | None = None) -> dict[str, Channel]:
    """A channel for each of email, sms, push, webhook and in_app, keyed by the name messages use.
    An unconfigured provider becomes a `ConsoleChannel(stands_in_for=name)` (printing to `stream`),
    or is left out with `console_fallback=False`. Half a provider's settings raise ChannelConfigError."""
    channels: dict[str, Channel] = {}
    for name, build in _BUILDERS.items():
        channel = build(settings)
        if channel is not None:
            channels[name] = channel
        elif console_fallback:
            log.warning("channel %s is not configured: its messages are printed to the console", name)
            channels[name] = ConsoleChannel(stream, stands_in_for=name)
        else:
            log.warning("channel %s is not configured: its messages will fail", name)
    channels["in_app"] = InAppChannel()
    return channels
