"""The `email` notifier: SMTP with STARTTLS and AUTH, one mail thread per incident.

Why aiosmtplib rather than the stdlib `smtplib` in a worker thread: a step that times out or a daemon
that shuts down cancels the `notify` coroutine, and a thread blocked in `smtplib` cannot be cancelled:
it would hold the SMTP connection (and delay shutdown) for up to `timeout` after the run has moved on.
aiosmtplib speaks the same protocol natively on the event loop, so cancellation closes the connection at
once; it is typed (`py.typed`), has no dependencies of its own and is actively maintained.

Each message is multipart/alternative: a plain-text part and an HTML part in which every value from the
notification (summary, details, links) is escaped. The incident's first message's `Message-ID` is the
receipt (`{"message_id", "subject"}`) the incident record keeps; later messages carry it in
`In-Reply-To` and `References` under `Re: <the first subject>`, so mail clients show one thread.

Errors: refused connections, timeouts, dropped connections and 4xx replies are temporary; 5xx replies
(535 authentication failed, 550 mailbox unavailable...), a relay without STARTTLS and a certificate that
does not verify are permanent. The password never appears in an error: server replies are scrubbed.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

import aiosmtplib

from orchestrator.core.config_drivers import EmailConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers.base import Notification, Notifier

_SUBJECT_MAX = 200
_REPLY_MAX = 200


def _one_line(text: str, limit: int) -> str:
    """Header-safe: no line breaks (they would inject headers), runs of whitespace collapsed."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def subject_for(note: Notification) -> str:
    where = f" {note.cluster}" if note.cluster else ""
    incident = f" ({note.incident})" if note.incident else ""
    return _one_line(f"[FAILOVER] {note.severity.upper()}{where}: {note.summary}{incident}", _SUBJECT_MAX)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _facts(note: Notification) -> list[tuple[str, str]]:
    """The lines both parts show, in order, as (label, text)."""
    facts: list[tuple[str, str]] = [("Severity", note.severity)]
    if note.cluster:
        facts.append(("Cluster", note.cluster))
    if note.incident:
        state = "resolved" if note.resolve else note.incident_state
        facts.append(("Incident", f"{note.incident} ({state})" if state else note.incident))
    if note.run_id:
        facts.append(("Run", f"{note.run_id} ({note.playbook})" if note.playbook else note.run_id))
    facts.extend((str(k), _value(v)) for k, v in note.details.items())
    return facts


def text_body(note: Notification) -> str:
    lines = [note.summary, ""]
    lines += [f"{label}: {text}" for label, text in _facts(note)]
    if note.links:
        lines += ["", *(f"{name}: {url}" for name, url in note.links.items())]
    return "\n".join(lines) + "\n"


def html_body(note: Notification) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><th align='left'>{esc(label)}</th><td>{esc(text)}</td></tr>" for label, text in _facts(note)
    )
    links = "".join(
        f"<li><a href='{esc(url)}'>{esc(name)}</a></li>"
        for name, url in note.links.items()
        if url.startswith(("https://", "http://"))  # never a javascript: or data: link
    )
    return (
        "<!doctype html><html><body>"
        f"<p><strong>{esc(note.summary)}</strong></p><table>{rows}</table>"
        + (f"<ul>{links}</ul>" if links else "")
        + "</body></html>\n"
    )


def _thread(note: Notification) -> tuple[str, str] | None:
    """The first message's (Message-ID, subject), when the incident record has a usable receipt."""
    receipt = note.thread or {}
    message_id, subject = receipt.get("message_id"), receipt.get("subject")
    if isinstance(message_id, str) and re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", message_id):
        return message_id, _one_line(subject if isinstance(subject, str) else subject_for(note), _SUBJECT_MAX)
    return None


class EmailNotifier(Notifier):
    _tls: ssl.SSLContext | None = None

    def _section(self) -> EmailConfig:
        assert self.config.email is not None
        return self.config.email

    def _scrub(self, text: str) -> str:
        password = self._section().password
        if password is not None and password.get_secret_value():
            text = text.replace(password.get_secret_value(), "***")
        return _one_line(text, _REPLY_MAX)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            ca = self._section().ca
            try:
                self._tls = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as e:
                raise PermanentError(f"notifier {self.name}: cannot load the CA bundle {ca}: {e}") from e
        return self._tls

    def message(self, note: Notification) -> tuple[EmailMessage, str, tuple[str, str] | None]:
        """The message, its Message-ID and the thread it joins (None on an incident's first message)."""
        section = self._section()
        msg = EmailMessage()
        thread = _thread(note)
        domain = parseaddr(section.from_)[1].rpartition("@")[2] or "localhost"
        # short enough that `In-Reply-To: <id>` fits one header line (make_msgid's ids get folded)
        incident = re.sub(r"[^A-Za-z0-9-]", "", note.incident or "")[:40]
        message_id = f"<{secrets.token_hex(10)}{'.' + incident if incident else ''}@{domain}>"
        msg["From"] = section.from_
        msg["To"] = ", ".join(section.to)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = message_id
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders stay quiet
        if note.incident:
            msg["X-Failover-Incident"] = note.incident
        if thread is None:
            msg["Subject"] = subject_for(note)
        else:
            first_id, first_subject = thread
            msg["Subject"] = first_subject if first_subject.startswith("Re: ") else f"Re: {first_subject}"
            msg["In-Reply-To"] = first_id
            msg["References"] = first_id
        msg.set_content(text_body(note))
        msg.add_alternative(html_body(note), subtype="html")
        return msg, message_id, thread

    async def _session(self, client: aiosmtplib.SMTP) -> None:
        """On a connected client: EHLO, STARTTLS (strictly: a relay without it is refused, never fallen
        back from) and AUTH, as every delivery and every check does them."""
        section = self._section()
        if section.starttls:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise PermanentError(f"notifier {self.name}: the relay does not offer STARTTLS")
            await client.starttls(tls_context=self._tls_context())
        if section.username is not None and section.password is not None:
            await client.login(section.username, section.password.get_secret_value())

    def _client(self) -> aiosmtplib.SMTP:
        section = self._section()
        return aiosmtplib.SMTP(
            hostname=section.host, port=section.port, timeout=section.timeout_s, start_tls=False
        )

    async def _deliver(self, msg: EmailMessage) -> None:
        """Connect, upgrade, authenticate, send; the steps are explicit so each failure is classified
        precisely."""
        section = self._section()
        client = self._client()
        async with client:
            await self._session(client)
            await client.send_message(
                msg,
                sender=parseaddr(section.from_)[1],
                recipients=[parseaddr(to)[1] for to in section.to],
            )

    async def check(self) -> str:
        """Connect, EHLO, STARTTLS (certificate verified) and AUTH, then QUIT: the relay is reachable and
        takes our credentials. No MAIL FROM is sent: whether it relays to `to` only a message shows."""
        section = self._section()
        try:
            client = self._client()
            await client.connect()
            try:
                if not section.starttls:
                    await client.ehlo()
                await self._session(client)
            finally:
                if client.is_connected:
                    try:
                        await client.quit()
                    except aiosmtplib.SMTPException:
                        client.close()
        except Exception as e:  # classified just below, or re-raised as it is
            raise self._failure(e) from None
        done = ["connected"] + (["STARTTLS"] if section.starttls else [])
        done += ["AUTH"] if section.username is not None else []
        return f"SMTP relay {section.host}:{section.port}: " + ", ".join(done) + " (nothing sent)"

    def _failure(self, e: Exception) -> Exception:
        """An SMTP failure as ours: 4xx replies, refused, dropped and timed-out connections are temporary;
        5xx replies, a relay without STARTTLS, a certificate that does not verify are permanent. Server
        replies are scrubbed of the password. Anything else is returned as it is."""
        if isinstance(e, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in e.recipients]
            error = TemporaryError if any(400 <= c < 500 for c in codes) else PermanentError
            return error(f"notifier {self.name}: recipients refused (SMTP {codes})")
        if isinstance(e, aiosmtplib.SMTPResponseException):
            error = PermanentError if e.code >= 500 else TemporaryError
            what = f"SMTP {e.code} {self._scrub(e.message)}"
            return error(f"notifier {self.name}: {type(e).__name__}: {what}")
        if isinstance(e, aiosmtplib.SMTPNotSupported):  # no AUTH mechanism in common: configuration
            return PermanentError(f"notifier {self.name}: {self._scrub(e.message)}")
        if isinstance(e, ssl.SSLCertVerificationError):
            return PermanentError(f"notifier {self.name}: TLS certificate: {e.verify_message}")
        if isinstance(e, aiosmtplib.SMTPException | OSError):  # timeouts, refused, dropped connections
            return TemporaryError(f"notifier {self.name}: {type(e).__name__}: {self._scrub(str(e))}")
        return e

    async def send(self, note: Notification) -> dict[str, Any] | None:
        msg, message_id, thread = self.message(note)
        try:
            await self._deliver(msg)
        except Exception as e:  # `from None`: a chained exception would carry the reply unscrubbed
            raise self._failure(e) from None
        if not note.incident:
            return None
        if thread is not None:
            return {"message_id": thread[0], "subject": thread[1]}
        return {"message_id": message_id, "subject": msg["Subject"]}
