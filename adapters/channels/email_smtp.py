"""Email over SMTP with the standard library: a multipart/alternative message (plain text derived
from the rendered HTML), a Message-ID derived from the idempotency key, and one-click unsubscribe."""

from __future__ import annotations

import hashlib
import html
import re
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from html.parser import HTMLParser
from urllib.parse import parse_qs, quote, unquote, urlsplit

from journey_engine.ports import Delivery, DeliveryResult

HARD_BOUNCES = frozenset({550, 551, 553})  # mailbox unavailable, user not local, mailbox name not allowed
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_TRUE = frozenset({"1", "true", "yes", "on"})


class SmtpChannel:
    """Sends deliveries over one SMTP connection kept open between sends (implicit TLS with
    `implicit_tls=True`, STARTTLS with `starttls=True`, AUTH when a username is given): a 09:00 burst
    costs one handshake, not one per mail. A connection the server closed meanwhile is opened again
    once; after any other error it is dropped. `unsubscribe_urls` are mailto: and/or https: URLs;
    `{user}` in them is replaced by the user id (or it is added as a parameter)."""

    name: str = "email"

    def __init__(self, *, host: str, sender: str, port: int | None = None, username: str | None = None,
                 password: str | None = None, starttls: bool = False, implicit_tls: bool = False,
                 unsubscribe_urls: Sequence[str] = (), timeout: float = 10.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.host, self.sender = host, sender
        self.port = port if port is not None else _DEFAULT_PORTS["smtps" if implicit_tls else "smtp"]
        self.username, self.password = username, password
        self.starttls, self.implicit_tls = starttls, implicit_tls
        self.unsubscribe_urls = tuple(unsubscribe_urls)
        self.timeout = timeout
        self.tls_context = tls_context
        self.domain = parseaddr(sender)[1].rpartition("@")[2] or "journey-engine.invalid"
        self._smtp: smtplib.SMTP | None = None

    @classmethod
    def from_url(cls, url: str, *, sender: str, unsubscribe_urls: Sequence[str] = (), timeout: float = 10.0,
                 tls_context: ssl.SSLContext | None = None) -> SmtpChannel:
        """`smtp://user:pass@host:port?starttls=1`, or `smtps://...` for TLS from the first byte."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"an SMTP URL looks like smtp://user:pass@host:port?starttls=1, not {_redact(url)!r}")
        starttls = parse_qs(parts.query).get("starttls", ["0"])[-1].lower() in _TRUE
        return cls(host=parts.hostname, port=parts.port, sender=sender, starttls=starttls,
                   implicit_tls=parts.scheme == "smtps", username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   unsubscribe_urls=unsubscribe_urls, timeout=timeout, tls_context=tls_context)

    def send(self, delivery: Delivery) -> DeliveryResult:
        if not delivery.to:
            return DeliveryResult(status="failed", detail="email: the delivery has no address")
        try:
            message = self.message(delivery)
        except ValueError as exc:  # an address or header the email package refuses (a newline, ...)
            return DeliveryResult(status="failed", detail=f"cannot build the message: {exc}")
        try:
            self._transmit(message, delivery.to)
        except smtplib.SMTPRecipientsRefused as exc:
            code, answer = next(iter(exc.recipients.values()))
            return _answer_result(code, answer, recipient=True)
        except smtplib.SMTPNotSupportedError as exc:
            # Sending in clear text (or unauthenticated) when told not to is never the fix.
            return DeliveryResult(status="failed", detail=f"the server does not offer it: {exc}")
        except smtplib.SMTPResponseException as exc:
            return _answer_result(exc.smtp_code, exc.smtp_error, recipient=False)
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timed out, TLS failure
            return DeliveryResult(status="retry", detail=f"{type(exc).__name__}: {exc}")
        return DeliveryResult(status="delivered", detail="250 accepted", provider_id=message["Message-ID"])

    def message(self, delivery: Delivery) -> EmailMessage:
        """The MIME message for a delivery: text part first, HTML part last (the preferred one)."""
        message = EmailMessage()
        message["Subject"] = " ".join((delivery.subject or delivery.title or "").split())
        message["From"] = self.sender
        message["To"] = delivery.to
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id(delivery.key, self.domain)
        self._unsubscribe_headers(message, delivery.user)
        html_body = as_html(delivery.body)
        message.set_content(html_to_text(html_body))
        message.add_alternative(html_body, subtype="html")
        if delivery.locale:  # after the content: setting content drops the Content-* headers
            message["Content-Language"] = delivery.locale
        return message

    def _unsubscribe_headers(self, message: EmailMessage, user: str) -> None:
        urls = [unsubscribe_url(url, user) for url in self.unsubscribe_urls]
        if not urls:
            return
        message["List-Unsubscribe"] = ", ".join(f"<{url}>" for url in urls)
        if any(url.startswith("https:") for url in urls):  # RFC 8058 one-click needs an HTTPS URL
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"

    def _transmit(self, message: EmailMessage, to: str) -> None:
        sender = parseaddr(self.sender)[1] or self.sender
        for reused in (self._smtp is not None, False):
            smtp = self._smtp or self._connect()
            try:
                smtp.send_message(message, from_addr=sender, to_addrs=[to])
                return
            except smtplib.SMTPServerDisconnected:
                self.close()
                if not reused:  # a fresh connection that drops is the server's answer: retry later
                    raise
            except BaseException:
                self.close()  # a refused recipient or message leaves the session in an unknown state
                raise

    def _connect(self) -> smtplib.SMTP:
        context = self.tls_context or ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def close(self) -> None:
        """Say goodbye to the server, if connected. Idempotent."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def __repr__(self) -> str:
        return f"SmtpChannel(host={self.host!r}, port={self.port}, sender={self.sender!r}, starttls={self.starttls})"


def _answer_result(code: int, answer: bytes | str, *, recipient: bool) -> DeliveryResult:
    """4xx: try again later. 5xx: permanent; a refused *recipient* with 550/551/553 is a hard bounce,
    while a refused sender or message says nothing about the address."""
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else answer
    detail = f"{code} {' '.join(text.split())}"
    if 400 <= code < 500:
        return DeliveryResult(status="retry", detail=detail)
    if 500 <= code < 600:
        return DeliveryResult(status="failed", detail=detail, suppress_address=recipient and code in HARD_BOUNCES)
    return DeliveryResult(status="retry", detail=f"unexpected answer: {detail}")


def message_id(key: str, domain: str) -> str:
    """The same key always gives the same Message-ID, so a resend after a crash is recognisably the
    same message; the key is hashed because it may hold characters a Message-ID may not."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


def unsubscribe_url(template: str, user: str) -> str:
    """`template` with `{user}` replaced by the URL-quoted user id; without the placeholder the id
    is added as a parameter (`user=` for https, the subject for mailto)."""
    quoted = quote(user, safe="")
    if "{user}" in template:
        return template.replace("{user}", quoted)
    joiner = "&" if "?" in template else "?"
    if template.startswith("mailto:"):
        return f"{template}{joiner}subject=unsubscribe%20{quoted}"
    return f"{template}{joiner}user={quoted}"


_TAG = re.compile(r"<[a-zA-Z!/]")


def as_html(body: str) -> str:
    """A body written as HTML stays as it is; plain text is escaped with its line breaks kept."""
    if _TAG.search(body):
        return body
    return "<p>" + html.escape(body).replace("\n", "<br>\n") + "</p>"


def html_to_text(markup: str) -> str:
    """A readable plain-text version of an HTML body: blocks become lines, list items get dashes,
    links keep their targets, and scripts, styles and the head are dropped."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.text()


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "tr", "table", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                         "blockquote", "pre", "hr", "section", "article", "header", "footer"})
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[str]] = [[]]
        self.hidden = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in self._BLOCKS:
            self.lines.append(["- "] if tag == "li" else [])
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self._BLOCKS:
            self.lines.append([])
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith(("#", "javascript:")) and href not in "".join(self.lines[-1]):
                self.lines[-1].append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.lines[-1].append(data)

    def text(self) -> str:
        lines = [" ".join("".join(parts).split()) for parts in self.lines]
        paragraphs = [line for line in lines if line and line != "-"]
        return "\n".join(paragraphs) + "\n"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
