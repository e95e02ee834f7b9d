"""The channel adapters against real servers on 127.0.0.1 (aiosmtpd for SMTP, http.server for the
webhook, Twilio and FCM formats), and the Channel contract run against every adapter."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import io
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from adapters.channels import (
    ChannelConfigError,
    ChannelSettings,
    ConsoleChannel,
    FcmPushChannel,
    InAppChannel,
    SmtpChannel,
    TwilioSmsChannel,
    WebhookChannel,
    build_channels,
)
from adapters.channels.email_smtp import as_html, html_to_text, unsubscribe_url
from journey_engine.ports import Channel, Delivery, DeliveryResult

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-length").decode()
SENDER = "Acme <hello@acme.test>"


def delivery(**changes: Any) -> Delivery:
    base = Delivery(key="u1:onboarding::1:1:welcome_email", user="u1", journey="onboarding",
                    message="welcome_email", channel="email", to="ann@example.test", subject="Welcome, Ann",
                    title="Welcome", body="<h1>Hello Ann</h1><p>Start <a href=\"https://acme.test/go\">here</a>.</p>",
                    url="https://acme.test/go", locale="en",
                    data={"user_id": "u1", "traits": {"first_name": "Ann"}, "at": datetime(2026, 1, 5, tzinfo=UTC)})
    return replace(base, **changes)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- SMTP ----------------------------------------------------------------------------------------

SCRIPTED_RCPT = {"refuse550": "550 5.1.1 no such user", "refuse551": "551 5.1.6 user not local",
                 "refuse553": "553 5.1.3 mailbox name not allowed", "refuse552": "552 5.2.2 mailbox full",
                 "refuse451": "451 4.3.0 try again later", "refuse421": "421 4.7.0 too busy"}


class Mailbox:
    """An aiosmtpd handler that refuses the scripted recipients and keeps every accepted message."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(self, server: SmtpServer, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        answer = SCRIPTED_RCPT.get(address.partition("@")[0])
        if answer is None:
            envelope.rcpt_tos.append(address)
        return answer or "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        # What went over the wire, with the wire's CRLF line ends made local again.
        return [email.message_from_bytes((e.original_content or b"").replace(b"\r\n", b"\n"), _class=EmailMessage,
                                         policy=email.policy.default) for e in self.envelopes]


def authenticate(server: SmtpServer, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: object) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)  # not handled: the server answers 535 itself


@dataclass
class SmtpServerFixture:
    mailbox: Mailbox
    port: int
    client_tls: ssl.SSLContext | None = None


def start_smtp(**kwargs: Any) -> tuple[Controller, SmtpServerFixture]:
    mailbox = Mailbox()
    port = closed_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, SmtpServerFixture(mailbox, port)


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SmtpServerFixture]:
    controller, server = start_smtp()
    yield server
    controller.stop()


@pytest.fixture(scope="module")
def tls_smtp_server() -> Iterator[SmtpServerFixture]:
    """An SMTP server that requires STARTTLS, then AUTH as mailer/s3cret, with a certificate from a test CA."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    controller, server = start_smtp(tls_context=server_tls, require_starttls=True, auth_required=True,
                                    authenticator=authenticate)
    server.client_tls = ssl.create_default_context()
    ca.configure_trust(server.client_tls)
    yield server
    controller.stop()


@pytest.fixture
def mailbox(smtp_server: SmtpServerFixture) -> Mailbox:
    smtp_server.mailbox.envelopes.clear()
    return smtp_server.mailbox


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SmtpChannel]]:
    """SMTP channels keep their connection open between sends: every connection a test opens is
    counted here and closed after it."""
    opened: list[SmtpChannel] = []
    connect = SmtpChannel._connect

    def counting(self: SmtpChannel) -> Any:
        opened.append(self)
        return connect(self)

    monkeypatch.setattr(SmtpChannel, "_connect", counting)
    yield opened
    for channel in opened:
        channel.close()


def smtp_channel(port: int, **kwargs: Any) -> SmtpChannel:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": port, "sender": SENDER, "timeout": 2.0,
                               "unsubscribe_urls": ("mailto:unsubscribe@acme.test", "https://acme.test/unsub/{user}")}
    return SmtpChannel(**{**options, **kwargs})


def test_smtp_delivers_a_multipart_alternative_message(smtp_server: SmtpServerFixture, mailbox: Mailbox) -> None:
    """A delivered email has a plain-text part derived from the HTML, the HTML part, and the headers."""
    result = smtp_channel(smtp_server.port).send(delivery())
    assert result.status == "delivered"
    [envelope], [message] = mailbox.envelopes, mailbox.messages()
    assert (envelope.mail_from, envelope.rcpt_tos) == ("hello@acme.test", ["ann@example.test"])
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content() == "Hello Ann\nStart here (https://acme.test/go).\n"
    assert rich.get_content_type() == "text/html"
    assert rich.get_content().strip() == delivery().body
    assert (message["Subject"], message["From"], message["To"]) == ("Welcome, Ann", SENDER, "ann@example.test")
    assert message["Message-ID"] == result.provider_id and message["Message-ID"].endswith("@acme.test>")
    assert message["Content-Language"] == "en" and message["Date"]


def test_smtp_adds_one_click_unsubscribe_headers(smtp_server: SmtpServerFixture, mailbox: Mailbox) -> None:
    """List-Unsubscribe carries the mailto and https URLs with the user id, and one-click POST is offered."""
    smtp_channel(smtp_server.port).send(delivery(user="ann smith"))
    [message] = mailbox.messages()
    assert message["List-Unsubscribe"].strip() == ("<mailto:unsubscribe@acme.test?subject=unsubscribe%20ann%20smith>, "
                                           "<https://acme.test/unsub/ann%20smith>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_smtp_message_id_is_stable_per_key(smtp_server: SmtpServerFixture, mailbox: Mailbox) -> None:
    """Two sends of the same key carry the same Message-ID; another key gets another one."""
    channel = smtp_channel(smtp_server.port)
    for key in ("k-1", "k-1", "k-2"):
        assert channel.send(delivery(key=key)).status == "delivered"
    ids = [m["Message-ID"] for m in mailbox.messages()]
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(("local", "status", "suppress"), [
    ("refuse550", "failed", True),
    ("refuse551", "failed", True),
    ("refuse553", "failed", True),
    ("refuse552", "failed", False),
    ("refuse451", "retry", False),
    ("refuse421", "retry", False),
], ids=["550-hard-bounce", "551-hard-bounce", "553-hard-bounce", "552-permanent", "451-transient", "421-transient"])
def test_smtp_maps_recipient_refusals(smtp_server: SmtpServerFixture, mailbox: Mailbox, local: str, status: str,
                                      suppress: bool) -> None:
    """A refused recipient maps to failed (suppressing the address on 550/551/553) or retry for 4xx."""
    result = smtp_channel(smtp_server.port).send(delivery(to=f"{local}@example.test"))
    assert (result.status, result.suppress_address) == (status, suppress)
    assert result.detail == SCRIPTED_RCPT[local]
    assert mailbox.envelopes == []


def test_smtp_starttls_not_offered_fails(smtp_server: SmtpServerFixture, mailbox: Mailbox) -> None:
    """Asked for STARTTLS by a server that does not offer it, the channel fails rather than send in clear."""
    result = smtp_channel(smtp_server.port, starttls=True).send(delivery())
    assert (result.status, result.suppress_address) == ("failed", False)
    assert "STARTTLS" in result.detail
    assert mailbox.envelopes == []


def test_smtp_sends_a_burst_over_one_connection(mailbox: Mailbox, smtp_server: SmtpServerFixture,
                                                 connections: list[SmtpChannel]) -> None:
    """Consecutive sends reuse the session: one handshake for many mails."""
    channel = smtp_channel(smtp_server.port)
    for n in range(5):
        assert channel.send(delivery(key=f"u1:onboarding::1:{n}:welcome_email")).status == "delivered"
    assert len(mailbox.envelopes) == 5
    assert len(connections) == 1


def test_smtp_reconnects_once_when_the_server_closed_the_session(mailbox: Mailbox, smtp_server: SmtpServerFixture,
                                                                 connections: list[SmtpChannel]) -> None:
    """A kept connection the server closed meanwhile is opened again, and the mail goes out once."""
    channel = smtp_channel(smtp_server.port)
    assert channel.send(delivery()).status == "delivered"
    assert channel._smtp is not None
    channel._smtp.quit()  # as an idle timeout on the server's side would
    assert channel.send(delivery(key="u1:onboarding::1:2:welcome_email")).status == "delivered"
    assert len(mailbox.envelopes) == 2
    assert len(connections) == 2


def test_smtp_closed_port_is_retried() -> None:
    """A server that refuses the connection is a transient failure."""
    result = smtp_channel(closed_port()).send(delivery())
    assert result.status == "retry"
    assert "ConnectionRefused" in result.detail


def test_smtp_starttls_and_login(tls_smtp_server: SmtpServerFixture) -> None:
    """With starttls and credentials the message goes out: this server takes mail only over TLS after AUTH."""
    tls_smtp_server.mailbox.envelopes.clear()
    channel = SmtpChannel.from_url(f"smtp://mailer:s3cret@127.0.0.1:{tls_smtp_server.port}?starttls=1",
                                   sender=SENDER, tls_context=tls_smtp_server.client_tls)
    assert channel.send(delivery()).status == "delivered"
    assert len(tls_smtp_server.mailbox.envelopes) == 1


@pytest.mark.parametrize(("url", "status"), [
    ("smtp://mailer:wrong@127.0.0.1:{port}?starttls=1", "failed"),
    ("smtp://mailer:s3cret@127.0.0.1:{port}", "failed"),
], ids=["wrong-password", "no-starttls"])
def test_smtp_refused_session_fails(tls_smtp_server: SmtpServerFixture, url: str, status: str) -> None:
    """Wrong credentials, or skipping STARTTLS where the server demands it, fail without suppressing the address."""
    channel = SmtpChannel.from_url(url.format(port=tls_smtp_server.port), sender=SENDER,
                                   tls_context=tls_smtp_server.client_tls)
    result = channel.send(delivery())
    assert (result.status, result.suppress_address) == (status, False)
    assert result.detail


@pytest.mark.parametrize(("url", "expected"), [
    ("smtp://mail.test", ("mail.test", 25, None, None, False, False)),
    ("smtp://u%40x:p%3Aw@mail.test:587?starttls=1", ("mail.test", 587, "u@x", "p:w", True, False)),
    ("smtps://u:p@mail.test", ("mail.test", 465, "u", "p", False, True)),
], ids=["bare", "starttls-quoted-credentials", "implicit-tls"])
def test_smtp_url_parsing(url: str, expected: tuple[Any, ...]) -> None:
    """An SMTP URL gives host, port, decoded credentials and the TLS mode."""
    c = SmtpChannel.from_url(url, sender=SENDER)
    assert (c.host, c.port, c.username, c.password, c.starttls, c.implicit_tls) == expected


def test_smtp_url_must_be_smtp() -> None:
    """Another scheme is refused with the password hidden."""
    with pytest.raises(ValueError, match=r"http://u:\*\*\*@x"):
        SmtpChannel.from_url("http://u:secret@x", sender=SENDER)


def test_smtp_header_injection_fails() -> None:
    """An address with a line break cannot smuggle headers: the send fails before connecting."""
    result = smtp_channel(closed_port()).send(delivery(to="a@example.test\r\nBcc: everyone@example.test"))
    assert result.status == "failed"


@pytest.mark.parametrize(("markup", "text"), [
    ("<p>a</p><p>b &amp; c</p>", "a\nb & c\n"),
    ("<ul><li>one</li><li>two</li></ul>", "- one\n- two\n"),
    ("<head><style>p {}</style></head><p>x<script>y()</script></p>", "x\n"),
    ('<a href="https://a.test">https://a.test</a>', "https://a.test\n"),
    ("line<br>break", "line\nbreak\n"),
], ids=["paragraphs", "list", "hidden", "link-text-is-url", "br"])
def test_html_to_text(markup: str, text: str) -> None:
    """The plain-text part keeps the words and the structure and drops what is not text."""
    assert html_to_text(markup) == text


def test_plain_body_becomes_escaped_html() -> None:
    """A body without tags gets an HTML part with its text escaped and its line breaks kept."""
    assert as_html("a < b\nc") == "<p>a &lt; b<br>\nc</p>"


@pytest.mark.parametrize(("template", "url"), [
    ("https://a.test/u/{user}", "https://a.test/u/a%2Fb"),
    ("https://a.test/unsub?list=news", "https://a.test/unsub?list=news&user=a%2Fb"),
    ("mailto:off@a.test", "mailto:off@a.test?subject=unsubscribe%20a%2Fb"),
], ids=["placeholder", "https-parameter", "mailto-subject"])
def test_unsubscribe_url_carries_the_user(template: str, url: str) -> None:
    """The user id is quoted into the placeholder or added as a parameter."""
    assert unsubscribe_url(template, "a/b") == url


# --- HTTP providers ------------------------------------------------------------------------------

@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    """A local HTTP server that records requests and answers with scripted (status, JSON) pairs."""

    port: int
    requests: list[Captured] = field(default_factory=list)
    script: list[tuple[int, object]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def http_handler(state: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.requests.append(Captured("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, answer = state.script.pop(0) if state.script else (200, {})
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
            pass

    return Handler


@pytest.fixture(scope="module")
def http_server_module() -> Iterator[HttpServer]:
    state = HttpServer(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_server(http_server_module: HttpServer) -> HttpServer:
    http_server_module.requests.clear()
    http_server_module.script.clear()
    return http_server_module


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The receiver's side of Standard Webhooks, written from the spec independently of the channel."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert any(hmac.compare_digest(expected, sig) for sig in headers["webhook-signature"].split(" "))
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 300


def webhook(**kwargs: Any) -> WebhookChannel:
    return WebhookChannel(secret=SECRET, **kwargs)


def test_webhook_posts_a_signed_json_body(http_server: HttpServer) -> None:
    """The body has the documented fields and a Standard Webhooks signature the receiver can verify."""
    result = webhook(allow_private=True).send(delivery(channel="webhook", to=f"{http_server.url}/hooks/journey"))
    assert result.status == "delivered"
    [request] = http_server.requests
    assert (request.path, request.headers["content-type"]) == ("/hooks/journey", "application/json")
    verify_standard_webhook(SECRET, request.headers, request.body)
    body = json.loads(request.body)
    assert sorted(body) == sorted(["type", "key", "user", "journey", "message", "title", "body", "url", "data",
                                   "timestamp"])
    assert (body["key"], body["user"], body["data"]["traits"]) == (delivery().key, "u1", {"first_name": "Ann"})
    assert request.headers["webhook-id"] == delivery().key


def test_webhook_id_is_the_key_across_retries(http_server: HttpServer) -> None:
    """A resend of the same key carries the same webhook-id, so the receiver can drop the duplicate."""
    channel = webhook(allow_private=True)
    for attempt in (1, 2):
        channel.send(delivery(to=f"{http_server.url}/h", attempt=attempt))
    assert [r.headers["webhook-id"] for r in http_server.requests] == [delivery().key] * 2


def test_webhook_unicode_key_still_verifies(http_server: HttpServer) -> None:
    """A key a header cannot hold is replaced by a stable digest, and the signature still verifies."""
    channel = webhook(allow_private=True)
    channel.send(delivery(key="용자:onboarding", to=f"{http_server.url}/h"))
    channel.send(delivery(key="용자:onboarding", to=f"{http_server.url}/h"))
    first, second = http_server.requests
    assert first.headers["webhook-id"].startswith("sha256_")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verify_standard_webhook(SECRET, first.headers, first.body)


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (204, "delivered"), (301, "failed"), (400, "failed"), (410, "failed"),
    (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"),
], ids=lambda value: str(value))
def test_webhook_maps_http_statuses(http_server: HttpServer, status: int, expected: str) -> None:
    """2xx is delivered, 408/429/5xx retried, and other answers (redirects included) failed."""
    http_server.script.append((status, {"error": "scripted"}))
    result = webhook(allow_private=True).send(delivery(to=f"{http_server.url}/h"))
    assert result.status == expected
    assert str(status) in result.detail


@pytest.mark.parametrize(("target", "reason"), [
    ("http://127.0.0.1:{port}/h", "loopback"),
    ("http://localhost:{port}/h", "loopback"),
    ("http://[::1]:{port}/h", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/h", "loopback"),
    ("http://10.1.2.3/h", "private"),
    ("http://172.16.5.4/h", "private"),
    ("http://192.168.0.10/h", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[fe80::1]/h", "link-local"),
    ("http://[fd12:3456::1]/h", "unique-local"),
    ("http://0.0.0.0:{port}/h", "unspecified"),
    ("http://100.64.0.1/h", "not a public address"),
], ids=["127.0.0.1", "localhost", "ipv6-loopback", "ipv4-mapped", "10/8", "172.16/12", "192.168/16",
        "metadata-169.254", "fe80", "fc00-ula", "0.0.0.0", "cgnat"])
def test_webhook_refuses_internal_targets(http_server: HttpServer, target: str, reason: str) -> None:
    """Targets inside the network fail with the reason, and nothing reaches them."""
    result = webhook().send(delivery(to=target.format(port=http_server.port)))
    assert (result.status, result.suppress_address) == ("failed", False)
    assert reason in result.detail and "allow_private" in result.detail
    assert http_server.requests == []


def test_webhook_allow_private_reaches_a_named_host(http_server: HttpServer) -> None:
    """With allow_private the request goes to a checked address and still names the host."""
    result = webhook(allow_private=True).send(delivery(to=f"http://localhost:{http_server.port}/h"))
    assert result.status == "delivered"
    assert http_server.requests[0].headers["host"] == f"localhost:{http_server.port}"


@pytest.mark.parametrize("target", ["ftp://example.test/h", "not a url", "http:///nohost"],
                         ids=["ftp", "garbage", "no-host"])
def test_webhook_refuses_non_http_targets(target: str) -> None:
    """A target that is not an http(s) URL fails permanently."""
    assert webhook().send(delivery(to=target)).status == "failed"


@pytest.mark.parametrize("secret", ["whsec_***", "whsec_", "plain words"], ids=["not-base64", "empty", "words"])
def test_webhook_secret_must_be_base64(secret: str) -> None:
    """A malformed secret is refused when the channel is made, not at the first send."""
    with pytest.raises(ValueError, match=r"whsec_|empty"):
        WebhookChannel(secret=secret)


def twilio(server: HttpServer) -> TwilioSmsChannel:
    return TwilioSmsChannel(account_sid="AC123", auth_token="tok", sender="+15005550006", base_url=server.url)


def test_twilio_request_format(http_server: HttpServer) -> None:
    """The SMS is a form POST to the Messages resource with Basic auth and the idempotency token."""
    http_server.script.append((201, {"sid": "SM42", "status": "queued"}))
    result = twilio(http_server).send(delivery(channel="sms", to="+4915112345678", body="Your code is 12"))
    assert (result.status, result.provider_id) == ("delivered", "SM42")
    [request] = http_server.requests
    assert request.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {"To": ["+4915112345678"], "From": ["+15005550006"],
                                               "Body": ["Your code is 12"]}
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert request.headers["i-twilio-idempotency-token"] == delivery().key


@pytest.mark.parametrize(("status", "answer", "expected", "suppress"), [
    (400, {"code": 21211, "message": "Invalid 'To' Phone Number"}, "failed", True),
    (400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}, "failed", True),
    (400, {"code": 21602, "message": "Message body is required"}, "failed", False),
    (429, {"code": 20429, "message": "Too Many Requests"}, "retry", False),
    (500, {}, "retry", False),
], ids=["invalid-number", "unsubscribed", "bad-request", "429", "500"])
def test_twilio_maps_errors(http_server: HttpServer, status: int, answer: object, expected: str,
                            suppress: bool) -> None:
    """Twilio's answers map to retry or failed, suppressing the number only for errors about the number."""
    http_server.script.append((status, answer))
    result = twilio(http_server).send(delivery(to="+100"))
    assert (result.status, result.suppress_address) == (expected, suppress)


def fcm(server: HttpServer) -> FcmPushChannel:
    return FcmPushChannel(project="demo-proj", access_token="ya29.token", base_url=server.url)


def test_fcm_request_format(http_server: HttpServer) -> None:
    """The push is an FCM v1 messages:send with a bearer token, a notification and string data."""
    http_server.script.append((200, {"name": "projects/demo-proj/messages/0:1"}))
    result = fcm(http_server).send(delivery(channel="push", to="device-token-1", title="Hi", body="Come back"))
    assert (result.status, result.provider_id) == ("delivered", "projects/demo-proj/messages/0:1")
    [request] = http_server.requests
    assert request.path == "/v1/projects/demo-proj/messages:send"
    assert request.headers["authorization"] == "Bearer ya29.token"
    assert json.loads(request.body) == {"message": {
        "token": "device-token-1", "notification": {"title": "Hi", "body": "Come back"},
        "data": {"key": delivery().key, "journey": "onboarding", "message": "welcome_email",
                 "url": "https://acme.test/go"}}}


FCM_UNREGISTERED = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                              "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                           "errorCode": "UNREGISTERED"}]}}


@pytest.mark.parametrize(("status", "answer", "expected", "suppress"), [
    (404, FCM_UNREGISTERED, "failed", True),
    (404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found."}}, "failed",
     True),
    (404, "<html>no such path</html>", "failed", False),
    (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad data"}}, "failed", False),
    (401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "expired"}}, "failed", False),
    (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}, "retry", False),
    (503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "later"}}, "retry", False),
], ids=["unregistered", "not-found", "wrong-url", "invalid-argument", "unauthenticated", "quota", "unavailable"])
def test_fcm_maps_errors(http_server: HttpServer, status: int, answer: object, expected: str, suppress: bool) -> None:
    """An unregistered token is suppressed (a bare 404 is a wrong URL, not a dead token); quota and outages are
    retried; other errors fail."""
    http_server.script.append((status, answer))
    result = fcm(http_server).send(delivery(to="device-token-1"))
    assert (result.status, result.suppress_address) == (expected, suppress)


# --- console and in-app --------------------------------------------------------------------------

def test_console_prints_one_line_per_send() -> None:
    """The console channel prints the channel, user, journey/message, address, subject and key on one line."""
    stream = io.StringIO()
    result = ConsoleChannel(stream).send(delivery(subject="Welcome,\n  Ann"))
    assert result.status == "delivered"
    assert stream.getvalue() == (f"[email] u1 onboarding/welcome_email -> ann@example.test: Welcome, Ann "
                                 f"(key={delivery().key})\n")


def test_console_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream the line goes to standard output."""
    ConsoleChannel().send(delivery(channel="in_app", to=None, subject=None, title=None, body="Hi " * 40))
    out = capsys.readouterr().out
    assert out.startswith("[in_app] u1 onboarding/welcome_email -> (inbox): Hi Hi") and "...(key=" not in out
    assert out.count("\n") == 1


def test_in_app_marks_delivered() -> None:
    """An in-app message is in the inbox already, so handing it over always succeeds."""
    assert InAppChannel().send(delivery(channel="in_app", to=None)).status == "delivered"


# --- the contract, against every adapter ---------------------------------------------------------

def unreachable(make: Callable[[str], Channel]) -> Callable[[], tuple[Channel, Delivery]]:
    return lambda: (make(f"http://127.0.0.1:{closed_port()}"), delivery())


NETWORK_CHANNELS: dict[str, Callable[[], tuple[Channel, Delivery]]] = {
    "smtp": lambda: (smtp_channel(closed_port()), delivery()),
    "webhook": lambda: (webhook(allow_private=True), delivery(to=f"http://127.0.0.1:{closed_port()}/h")),
    "twilio": unreachable(lambda url: TwilioSmsChannel(account_sid="AC1", auth_token="t", sender="+1",
                                                       base_url=url)),
    "fcm": unreachable(lambda url: FcmPushChannel(project="p", access_token="t", base_url=url)),
}
ALL_CHANNELS: dict[str, Callable[[], tuple[Channel, Delivery]]] = {
    **NETWORK_CHANNELS,
    "console": lambda: (ConsoleChannel(io.StringIO()), delivery()),
    "in_app": lambda: (InAppChannel(), delivery()),
}


@pytest.mark.parametrize("make", NETWORK_CHANNELS.values(), ids=NETWORK_CHANNELS.keys())
def test_contract_unreachable_provider_is_retried(make: Callable[[], tuple[Channel, Delivery]]) -> None:
    """A provider that cannot be reached gives `retry`, never an exception."""
    channel, item = make()
    result = channel.send(item)
    assert isinstance(result, DeliveryResult)
    assert (result.status, result.suppress_address) == ("retry", False)
    assert result.detail


@pytest.mark.parametrize("make", ALL_CHANNELS.values(), ids=ALL_CHANNELS.keys())
def test_contract_no_address_never_raises(make: Callable[[], tuple[Channel, Delivery]]) -> None:
    """A delivery without an address is answered, as failed by channels that need one, never by an exception."""
    channel, item = make()
    result = channel.send(replace(item, to=None))
    assert result.status in ({"delivered"} if isinstance(channel, ConsoleChannel | InAppChannel) else {"failed"})
    assert isinstance(channel.name, str) and channel.name


# --- settings ------------------------------------------------------------------------------------

FULL_ENV = {
    "JOURNEY_SMTP_URL": "smtp://u:p@mail.test:587?starttls=1", "JOURNEY_EMAIL_FROM": SENDER,
    "JOURNEY_UNSUBSCRIBE_URL": "mailto:off@acme.test, https://acme.test/unsub/{user}",
    "JOURNEY_WEBHOOK_SECRET": SECRET, "JOURNEY_WEBHOOK_ALLOW_PRIVATE": "yes",
    "JOURNEY_TWILIO_SID": "AC1", "JOURNEY_TWILIO_TOKEN": "t", "JOURNEY_TWILIO_FROM": "+1",
    "JOURNEY_FCM_PROJECT": "p", "JOURNEY_FCM_TOKEN": "t", "JOURNEY_FCM_URL": "http://fcm.test",
}


def test_settings_build_every_configured_channel() -> None:
    """With every provider configured, each channel is its real adapter, configured from the environment."""
    channels = build_channels(ChannelSettings.from_env(FULL_ENV))
    assert {name: type(c) for name, c in channels.items()} == {
        "email": SmtpChannel, "sms": TwilioSmsChannel, "push": FcmPushChannel, "webhook": WebhookChannel,
        "in_app": InAppChannel}
    email_channel, hook = channels["email"], channels["webhook"]
    assert isinstance(email_channel, SmtpChannel) and isinstance(hook, WebhookChannel)
    assert (email_channel.port, email_channel.starttls) == (587, True)
    assert email_channel.unsubscribe_urls == ("mailto:off@acme.test", "https://acme.test/unsub/{user}")
    assert hook.allow_private is True


def test_settings_fall_back_to_the_console_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    """With nothing configured every provider is a console stand-in, named as such and logged."""
    with caplog.at_level(logging.WARNING, logger="journey.channels"):
        channels = build_channels(ChannelSettings.from_env({}))
    stand_ins = {name: c.stands_in_for for name, c in channels.items() if isinstance(c, ConsoleChannel)}
    assert stand_ins == {"email": "email", "sms": "sms", "push": "push", "webhook": "webhook"}
    assert isinstance(channels["in_app"], InAppChannel)
    assert sorted(r.getMessage().split()[1] for r in caplog.records) == ["email", "push", "sms", "webhook"]


def test_settings_without_fallback_leave_channels_out() -> None:
    """With console_fallback=False an unconfigured provider is absent from the mapping."""
    env = {k: v for k, v in FULL_ENV.items() if not k.startswith(("JOURNEY_SMTP", "JOURNEY_EMAIL"))}
    assert sorted(build_channels(ChannelSettings.from_env(env), console_fallback=False)) == [
        "in_app", "push", "sms", "webhook"]


@pytest.mark.parametrize(("env", "message"), [
    ({"JOURNEY_SMTP_URL": "smtp://mail.test"}, "email is half configured: set JOURNEY_EMAIL_FROM"),
    ({"JOURNEY_TWILIO_SID": "AC1"}, "set JOURNEY_TWILIO_TOKEN, JOURNEY_TWILIO_FROM"),
    ({"JOURNEY_FCM_URL": "http://fcm.test"}, "set JOURNEY_FCM_PROJECT, JOURNEY_FCM_TOKEN"),
    ({"JOURNEY_SMTP_URL": "mail.test:25", "JOURNEY_EMAIL_FROM": SENDER}, "JOURNEY_SMTP_URL: an SMTP URL"),
    ({"JOURNEY_WEBHOOK_SECRET": "nope!"}, "JOURNEY_WEBHOOK_SECRET: a webhook secret is"),
    ({"JOURNEY_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "JOURNEY_WEBHOOK_ALLOW_PRIVATE must be"),
    ({"JOURNEY_UNSUBSCRIBE_URL": "ftp://x"}, "neither a mailto: nor an https: URL"),
], ids=["smtp-without-from", "twilio-partial", "fcm-url-only", "smtp-url", "webhook-secret", "bool", "unsubscribe"])
def test_settings_refuse_unworkable_configuration(env: dict[str, str], message: str) -> None:
    """Half a provider or a malformed value stops startup with the variable to fix, instead of a silent fallback."""
    with pytest.raises(ChannelConfigError, match=message):
        build_channels(ChannelSettings.from_env(env))


def test_settings_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """JOURNEY_SETTINGS names a TOML file whose [channels] table fills what the environment leaves unset."""
    path = tmp_path / "settings.toml"
    path.write_text('[channels]\nemail_from = "file@acme.test"\nsmtp_url = "smtp://file.test"\n'
                    'unsubscribe_url = ["https://acme.test/u/{user}"]\nwebhook_allow_private = true\n')
    settings = ChannelSettings.from_env({"JOURNEY_SETTINGS": str(path), "JOURNEY_SMTP_URL": "smtp://env.test"})
    assert (settings.smtp_url, settings.email_from) == ("smtp://env.test", "file@acme.test")
    assert (settings.unsubscribe_url, settings.webhook_allow_private) == (("https://acme.test/u/{user}",), True)


def test_settings_file_rejects_unknown_keys(tmp_path: Path) -> None:
    """A misspelt key in the settings file is named with a suggestion."""
    path = tmp_path / "settings.toml"
    path.write_text('[channels]\nsmtp_ulr = "smtp://x"\n')
    with pytest.raises(ChannelConfigError, match="unknown channel setting `smtp_ulr`; did you mean `smtp_url`"):
        ChannelSettings.from_env({"JOURNEY_SETTINGS": str(path)})


def test_settings_repr_hides_secrets() -> None:
    """Secrets and the SMTP URL (which holds a password) stay out of reprs and logs."""
    text = repr(ChannelSettings.from_env(FULL_ENV))
    assert "u:p@" not in text and SECRET not in text and "'t'" not in text
