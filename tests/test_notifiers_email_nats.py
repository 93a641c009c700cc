"""The email notifier against a real SMTP server (aiosmtpd on loopback, STARTTLS with a trustme
certificate, AUTH), and the nats notifier against a real nats-server."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import PermanentError, TemporaryError, ValidationFailed
from orchestrator.notifiers import Notification, build_notifier
from tests.helpers import collect, wait_for

PASSWORD = "hunter2-smtp-Secret"


@dataclass
class Mailbox:
    """What the SMTP server received, and what it answers (a status to refuse RCPT or DATA with)."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        assert session.ssl is not None, "the message travelled in plain text"
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == b"failover"
            and auth_data.password == PASSWORD.encode()
        )
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@dataclass
class Smtp:
    port: int
    ca_file: Path
    box: Mailbox


@pytest.fixture
def tls_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


@contextmanager
def smtp_server(tls_ca: tuple[trustme.CA, Path], *, starttls: bool = True) -> Iterator[Smtp]:
    ca, ca_file = tls_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=context if starttls else None,
        require_starttls=starttls,
        authenticator=box.authenticate,
        auth_require_tls=True,
        auth_exclude_mechanism=["LOGIN"],
        ready_timeout=5.0,
    )
    controller.start()
    try:
        yield Smtp(port, ca_file, box)
    finally:
        controller.stop()


def mail_config(smtp: Smtp, **overrides: Any) -> NotifierConfig:
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "username": "failover",
        "password": PASSWORD,
        "from": "Failover <failover@example.com>",
        "to": ["oncall@example.com", "sre@example.com"],
        "timeout": "2s",
        "ca": str(smtp.ca_file),
        **overrides,
    }
    return NotifierConfig.model_validate({"name": "mail", "driver": "email", "email": section})


@asynccontextmanager
async def mailer(smtp: Smtp, **overrides: Any) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:
        yield build_notifier(mail_config(smtp, **overrides), session)


def parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


OPENED = Notification(
    "eu-west failed <script>alert(1)</script>",
    "critical",
    {"reason": "ingress 5xx", "moved": ["us-east"]},
    run_id="r-1",
    playbook="failover",
    cluster="eu-west",
    incident="inc-eu-west-3",
    incident_state="opened",
    links={"run": "https://failover.example.com/runs/r-1", "evil": "javascript:alert(1)"},
)


async def test_email_goes_over_starttls_with_auth_and_both_parts(tls_ca: tuple[trustme.CA, Path]) -> None:
    with smtp_server(tls_ca) as smtp:
        async with mailer(smtp) as notifier:
            receipt = await notifier.send(OPENED)
    [message] = smtp.box.messages
    assert smtp.box.logins == ["failover"]
    assert smtp.box.envelopes == [("failover@example.com", ["oncall@example.com", "sre@example.com"])]
    assert message["Subject"] == (
        "[FAILOVER] CRITICAL eu-west: eu-west failed <script>alert(1)</script> (inc-eu-west-3)"
    )
    assert message["From"] == "Failover <failover@example.com>"
    assert message["To"] == "oncall@example.com, sre@example.com"
    assert message["Auto-Submitted"] == "auto-generated" and message["X-Failover-Incident"] == "inc-eu-west-3"
    assert message["In-Reply-To"] is None and message["References"] is None
    assert receipt == {"message_id": message["Message-ID"], "subject": message["Subject"]}
    assert message["Message-ID"].endswith("@example.com>")
    plain, rich = parts(message)
    assert "eu-west failed <script>alert(1)</script>" in plain and "reason: ingress 5xx" in plain
    assert "Incident: inc-eu-west-3 (opened)" in plain and "https://failover.example.com/runs/r-1" in plain
    assert "<script>" not in rich and "eu-west failed &lt;script&gt;alert(1)&lt;/script&gt;" in rich
    assert "<a href='https://failover.example.com/runs/r-1'>run</a>" in rich
    assert "javascript:" not in rich


async def test_later_messages_join_the_incidents_thread(tls_ca: tuple[trustme.CA, Path]) -> None:
    with smtp_server(tls_ca) as smtp:
        async with mailer(smtp) as notifier:
            receipt = await notifier.send(OPENED)
            assert receipt is not None
            drained = Notification(
                "traffic moved to us-east",
                "warning",
                cluster="eu-west",
                incident="inc-eu-west-3",
                incident_state="drained",
                thread=receipt,
            )
            again = await notifier.send(drained)
            resolved = Notification(
                "eu-west is back", "info", incident="inc-eu-west-3", resolve=True, thread=receipt
            )
            await notifier.send(resolved)
    first, second, third = smtp.box.messages
    assert again == receipt, "later messages keep the first message's receipt"
    for later in (second, third):
        assert later["In-Reply-To"] == first["Message-ID"] == receipt["message_id"]
        assert later["References"] == first["Message-ID"]
        assert later["Subject"] == f"Re: {first['Subject']}"
        assert later["Message-ID"] != first["Message-ID"]
    assert "traffic moved to us-east" in parts(second)[0]
    assert "Incident: inc-eu-west-3 (resolved)" in parts(third)[0]


async def test_header_injection_in_the_summary_stays_in_the_subject(tls_ca: tuple[trustme.CA, Path]) -> None:
    with smtp_server(tls_ca) as smtp:
        async with mailer(smtp) as notifier:
            await notifier.send(Notification("down\r\nBcc: attacker@example.net\r\n\r\nbody", "error"))
    [message] = smtp.box.messages
    assert message["Bcc"] is None
    assert message["Subject"] == "[FAILOVER] ERROR: down Bcc: attacker@example.net body"
    assert smtp.box.envelopes[0][1] == ["oncall@example.com", "sre@example.com"]


async def test_wrong_password_is_permanent_and_never_in_the_error(tls_ca: tuple[trustme.CA, Path]) -> None:
    wrong = "not-the-Password-42"
    with smtp_server(tls_ca) as smtp:
        async with mailer(smtp, password=wrong) as notifier:
            with pytest.raises(PermanentError, match="535") as info:
                await notifier.send(OPENED)
    assert smtp.box.messages == []
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    # the library's exception is not chained on (`from None`): a traceback cannot show it either
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "notifier mail" in str(info.value)


async def test_smtp_replies_are_classified(tls_ca: tuple[trustme.CA, Path]) -> None:
    with smtp_server(tls_ca) as smtp:
        async with mailer(smtp) as notifier:
            smtp.box.rcpt_reply = "550 5.1.1 no such mailbox"
            with pytest.raises(PermanentError, match="550"):
                await notifier.send(OPENED)
            smtp.box.rcpt_reply = "450 4.2.0 mailbox busy"
            with pytest.raises(TemporaryError, match="450"):
                await notifier.send(OPENED)
            smtp.box.rcpt_reply = None
            smtp.box.data_reply = "451 4.3.0 try again later"
            with pytest.raises(TemporaryError, match="451"):
                await notifier.send(OPENED)
            smtp.box.data_reply = "554 5.6.0 message refused"
            with pytest.raises(PermanentError, match="554"):
                await notifier.send(OPENED)
        port = smtp.port
    async with mailer(Smtp(port, smtp.ca_file, Mailbox())) as notifier:
        with pytest.raises(TemporaryError, match="notifier mail") as info:
            await notifier.send(OPENED)  # nothing listens any more: refused
    assert PASSWORD not in str(info.value)


async def test_tls_problems_are_permanent(tls_ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    with smtp_server(tls_ca, starttls=False) as smtp:  # the relay offers no STARTTLS
        async with mailer(smtp) as notifier:
            with pytest.raises(PermanentError, match=r"(?i)starttls"):
                await notifier.send(OPENED)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with smtp_server(tls_ca) as smtp:  # a certificate that the configured CA did not sign
        async with mailer(smtp, ca=str(other)) as notifier:
            with pytest.raises(PermanentError, match="certificate"):
                await notifier.send(OPENED)
    assert smtp.box.messages == [] and smtp.box.logins == []


async def test_nats_notifier_publishes_the_body(bus: Bus) -> None:
    received = await collect(bus, "ops.failover")
    config = NotifierConfig.model_validate(
        {"name": "bus", "driver": "nats", "nats": {"subject": "ops.failover"}}
    )
    async with aiohttp.ClientSession() as session:
        notifier = build_notifier(config, session, bus.publish)
        assert await notifier.send(OPENED) is None
        await wait_for(lambda: len(received) == 1, 5.0, "the notification on ops.failover")
        [body] = received
        assert body["notifier"] == "bus" and body["summary"] == OPENED.summary
        assert body["incident"] == "inc-eu-west-3" and body["severity"] == "critical"
        assert body["links"]["run"] == "https://failover.example.com/runs/r-1"
        without = build_notifier(config, session)
        with pytest.raises(PermanentError, match="no NATS connection"):
            await without.send(OPENED)


BASE = """\
clusters:
  - name: eu-west
    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 443}}]
notifiers:
"""


def load_notifier(tmp_path: Path, line: str, env: dict[str, str] | None = None) -> NotifierConfig:
    path = tmp_path / "failover.yaml"
    path.write_text(BASE + line + "\n")
    [notifier] = load_config(path, env=env or {}).notifiers
    return notifier


def load_problems(tmp_path: Path, line: str) -> list[str]:
    path = tmp_path / "failover.yaml"
    path.write_text(BASE + line + "\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(path, env={})
    return [str(p) for p in info.value.problems]


def test_config_accepts_email_and_nats(tmp_path: Path) -> None:
    mail = load_notifier(
        tmp_path,
        "  - {name: mail, driver: email, email: {host: smtp.example.com, username: failover, "
        'password: "${SMTP_PASSWORD}", from: failover@example.com, to: [oncall@example.com]}}',
        env={"SMTP_PASSWORD": PASSWORD},
    )
    assert mail.email is not None and mail.email.port == 587 and mail.email.starttls
    assert mail.email.password is not None and mail.email.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(mail)
    bus = load_notifier(tmp_path, "  - {name: bus, driver: nats, nats: {subject: ops.failover}}")
    assert bus.nats is not None and bus.nats.subject == "ops.failover"


@pytest.mark.parametrize("subject", ["failover.events.x", "ops.*", "ops.>", "ops failover", "ops..x", ""])
def test_nats_subject_outside_ours_and_concrete(tmp_path: Path, subject: str) -> None:
    found = load_problems(tmp_path, f"  - {{name: bus, driver: nats, nats: {{subject: '{subject}'}}}}")
    assert any("notifiers[0].nats.subject" in p for p in found), found


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{host: h, from: a@example.com, to: []}", "to"),
        ("{host: h, from: not-an-address, to: [a@example.com]}", "e-mail address"),
        ("{host: h, username: u, from: a@example.com, to: [b@example.com]}", "go together"),
        (
            "{host: h, starttls: false, username: u, password: p, from: a@example.com, to: [b@example.com]}",
            "plain text",
        ),
    ],
)
def test_email_config_mistakes(tmp_path: Path, section: str, message: str) -> None:
    found = load_problems(tmp_path, f"  - {{name: mail, driver: email, email: {section}}}")
    assert any(message in p for p in found), found
    found = load_problems(tmp_path, "  - {name: mail, driver: email}")
    assert any("driver 'email' needs a 'email:' section" in p for p in found), found
