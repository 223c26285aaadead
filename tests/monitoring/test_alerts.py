"""Alerts delivered to a local HTTP server and a local SMTP server; dedupe and rate limits on a
frozen clock; no secret from the environment in anything an alert leaves behind."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import load_config
from workbench.monitoring.alerts import (
    MASK,
    Alert,
    Alerter,
    EmailChannel,
    LogChannel,
    WebhookChannel,
    recent_alerts,
)

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "PKFAKEKEY0123456789"
FAKE_SECRET = "fake-secret-abcdefghijklmnop"
FAKE_PASSWORD = "smtp-pass-zyxwvut"


class Hook:
    """A webhook receiver on 127.0.0.1: records JSON bodies, answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.raw: list[bytes] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                hook.raw.append(data)
                hook.bodies.append(json.loads(data))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Mailbox:
    """aiosmtpd handler: keeps each message and the logins it saw."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope.original_content)
        return "250 OK"

    def auth(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == FAKE_PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(
        box, hostname="127.0.0.1", port=port, authenticator=box.auth, auth_require_tls=False
    )
    ctl.start()
    yield box, port
    ctl.stop()


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2024, 6, 3, 14, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class Capture:
    name = "capture"
    min_severity = "info"

    def __init__(self) -> None:
        self.got: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.got.append(alert)


def test_webhook_gets_slack_and_discord_json(hook: Hook) -> None:
    al = Alerter([WebhookChannel(hook.url, min_severity="info")], secrets=[])
    d = al.send(Alert("critical", "drift", "ret_1 drifted", {"psi": 0.31}, key="m:ret_1"))
    assert d.ok and d.channels == {"webhook": "ok"}
    (body,) = hook.bodies
    assert body["text"] == body["content"] == "[CRITICAL] drift: ret_1 drifted (psi=0.31)"
    assert body["username"] == "workbench"
    only = WebhookChannel(hook.url, fmt="discord").payload(Alert("info", "x", "y"))
    assert "content" in only and "text" not in only


def test_a_failing_webhook_is_retried_once_and_never_raises(hook: Hook) -> None:
    hook.status = 503
    al = Alerter([LogChannel(), WebhookChannel(hook.url, min_severity="info")], secrets=[])
    d = al.send(Alert("warning", "staleness", "SYN000 is 4 bars behind"))
    assert d.outcome == "sent" and not d.ok
    assert d.channels["log"] == "ok" and "HTTP 503" in d.channels["webhook"]
    assert len(hook.bodies) == 2
    hook.status, hook.bodies = 404, []
    d = al.send(Alert("warning", "staleness", "SYN001 is 4 bars behind"))
    assert "HTTP 404" in d.channels["webhook"] and len(hook.bodies) == 1  # no retry on a 4xx


def test_email_over_a_local_smtp_server_logs_in_with_the_env_password(
    smtp: tuple[Mailbox, int],
) -> None:
    box, port = smtp
    ch = EmailChannel(
        "127.0.0.1", port, sender="wb@example.com", to=["ops@example.com", "risk@example.com"],
        tls="none", user="wb", password=FAKE_PASSWORD, min_severity="info",
    )  # fmt: skip
    d = Alerter([ch], secrets=[FAKE_PASSWORD]).send(
        Alert("critical", "session", "kill switch tripped", {"rule": "max_drawdown"})
    )
    assert d.ok, d.channels
    assert box.logins == [("wb", FAKE_PASSWORD)]
    (raw,) = box.messages
    msg = message_from_bytes(raw)
    assert msg["Subject"] == "[workbench] CRITICAL session: kill switch tripped"
    assert msg["To"] == "ops@example.com, risk@example.com"
    assert "rule: max_drawdown" in msg.get_payload()
    assert FAKE_PASSWORD.encode() not in raw


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with cryptography): (cert, key) PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workbench test smtp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem, key_pem = tmp / "smtp.crt", tmp / "smtp.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_pem, key_pem


class TlsMailbox(Mailbox):
    """Also records the TLS version each message arrived over (None: in the clear)."""

    def __init__(self) -> None:
        super().__init__()
        self.tls: list[str | None] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        obj = server.transport.get_extra_info("ssl_object")
        self.tls.append(obj.version() if obj is not None else None)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[TlsMailbox, int, int, ssl.SSLContext]]:
    """Two local SMTP servers with a self-signed certificate: STARTTLS required before AUTH and
    MAIL on the first port, implicit TLS (SMTPS) on the second; and a client context trusting
    that certificate."""
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    box = TlsMailbox()
    starttls = Controller(
        box, hostname="127.0.0.1", port=free_port(), authenticator=box.auth,
        tls_context=server_ctx, require_starttls=True, auth_require_tls=True,
    )  # fmt: skip
    implicit = Controller(
        box, hostname="127.0.0.1", port=free_port(), authenticator=box.auth,
        ssl_context=server_ctx, auth_require_tls=False,
    )  # fmt: skip
    starttls.start()
    implicit.start()
    yield box, starttls.port, implicit.port, ssl.create_default_context(cafile=str(cert))
    starttls.stop()
    implicit.stop()


def test_email_over_starttls_and_implicit_tls_verifies_the_server(tls_smtp) -> None:
    box, starttls_port, ssl_port, trust = tls_smtp

    def channel(port: int, tls: str, ctx: ssl.SSLContext | None) -> EmailChannel:
        return EmailChannel(
            "127.0.0.1", port, sender="wb@example.com", to=["ops@example.com"], tls=tls,
            user="wb", password=FAKE_PASSWORD, min_severity="info", ssl_context=ctx, timeout=5,
        )  # fmt: skip

    def send(ch: EmailChannel) -> str:
        return (
            Alerter([ch], secrets=[FAKE_PASSWORD])
            .send(Alert("critical", "x", "y"))
            .channels["email"]
        )

    # STARTTLS, the certificate trusted: login and message over TLS 1.2+
    assert send(channel(starttls_port, "starttls", trust)) == "ok"
    assert box.logins == [("wb", FAKE_PASSWORD)] and box.tls[-1] in ("TLSv1.2", "TLSv1.3")
    # implicit TLS (SMTPS), the same
    assert send(channel(ssl_port, "ssl", trust)) == "ok"
    assert len(box.logins) == 2 and len(box.messages) == 2 and box.tls[-1] in ("TLSv1.2", "TLSv1.3")
    # the default context does not trust a self-signed certificate: refused, nothing sent
    for port, tls in ((starttls_port, "starttls"), (ssl_port, "ssl")):
        out = send(channel(port, tls, None))
        assert "CERTIFICATE_VERIFY_FAILED" in out, out
    # without TLS the server offers no AUTH: the password is never sent in the clear
    out = send(channel(starttls_port, "none", None))
    assert "SMTPNotSupportedError" in out and "AUTH" in out, out
    assert len(box.logins) == 2 and len(box.messages) == 2  # no login, no message in the clear


def test_email_failure_is_reported_not_raised() -> None:
    ch = EmailChannel("127.0.0.1", free_port(), sender="a@b", to=["c@d"], tls="none", timeout=2)
    d = Alerter([ch], secrets=[]).send(Alert("critical", "x", "y"))
    assert d.outcome == "sent" and "ConnectionRefusedError" in d.channels["email"]


def test_dedupe_per_kind_key_and_severity() -> None:
    clock, cap = Clock(), Capture()
    al = Alerter([cap], dedupe_seconds=600, rate_limit=100, clock=clock, secrets=[])
    a = Alert("warning", "drift", "ret_1 PSI 0.12", key="m:ret_1")
    assert al.send(a).outcome == "sent"
    clock.tick(599)
    # the same subject with other numbers is the same alert
    assert (
        al.send(Alert("warning", "drift", "ret_1 PSI 0.14", key="m:ret_1")).outcome
        == "deduplicated"
    )
    assert al.send(Alert("critical", "drift", "ret_1 PSI 0.3", key="m:ret_1")).outcome == "sent"
    assert al.send(Alert("warning", "drift", "ret_3 PSI 0.12", key="m:ret_3")).outcome == "sent"
    clock.tick(1)
    assert al.send(a).outcome == "sent"  # the window has passed
    assert [x.message for x in cap.got] == [
        "ret_1 PSI 0.12", "ret_1 PSI 0.3", "ret_3 PSI 0.12", "ret_1 PSI 0.12",
    ]  # fmt: skip


def test_rate_limit_per_kind_then_the_held_back_count() -> None:
    clock, cap = Clock(), Capture()
    al = Alerter([cap], dedupe_seconds=0, rate_limit=3, rate_window_seconds=60, clock=clock,
                 secrets=[])  # fmt: skip
    outcomes = []
    for i in range(5):
        outcomes.append(
            al.send(Alert("warning", "staleness", f"SYN00{i} behind", key=str(i))).outcome
        )
        clock.tick(10)
    assert outcomes == ["sent"] * 3 + ["rate_limited"] * 2
    assert al.send(Alert("warning", "drift", "another kind")).outcome == "sent"  # per kind
    clock.tick(10)  # t = 60 s: the first staleness alert leaves the window
    d = al.send(Alert("warning", "staleness", "SYN009 behind", key="9"))
    assert d.outcome == "sent" and d.alert.values["held_back_since_last"] == 2
    assert (
        al.send(Alert("warning", "staleness", "SYN008 behind", key="8")).outcome == "rate_limited"
    )


def test_history_seeds_dedupe_after_a_restart(tmp_path: Path) -> None:
    clock, hist = Clock(), tmp_path / "alerts.jsonl"
    a = Alert("critical", "drift", "ret_1 PSI 0.3", key="m:ret_1")
    assert Alerter([], clock=clock, history_path=hist, secrets=[]).send(a).outcome == "sent"
    clock.tick(60)
    again = Alerter([], clock=clock, history_path=hist, secrets=[])  # a new process
    assert again.send(a).outcome == "deduplicated"
    rows = recent_alerts(hist)
    assert [r["outcome"] for r in rows] == ["sent", "deduplicated"]
    assert rows[0]["ts"] == "2024-06-03T14:00:00+00:00"


def test_no_secret_from_the_environment_in_any_alert(
    hook: Hook, smtp: tuple[Mailbox, int], tmp_path: Path, isolated: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    box, port = smtp
    monkeypatch.setenv("APCA_API_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", FAKE_SECRET)
    monkeypatch.setenv("WB_SMTP_PASSWORD", FAKE_PASSWORD)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0987654321")
    monkeypatch.setenv("WB_ALERTS__WEBHOOK_URL", hook.url)
    monkeypatch.setenv("WB_ALERTS__MIN_SEVERITY", "info")
    monkeypatch.setenv("WB_ALERTS__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("WB_ALERTS__SMTP_PORT", str(port))
    monkeypatch.setenv("WB_ALERTS__SMTP_TLS", "none")
    monkeypatch.setenv("WB_ALERTS__EMAIL_TO", "[ops@example.com]")
    monkeypatch.setenv("WB_ALERTS__HISTORY_PATH", str(tmp_path / "alerts.jsonl"))
    cfg = load_config(REPO)
    al = Alerter.from_config(cfg)
    assert [c.name for c in al.channels] == ["log", "webhook", "email"]
    leaky = Alert(
        "critical", "session",
        f"auth failed for key {FAKE_KEY} with secret {FAKE_SECRET} (hook {hook.url})",
        values={"key_id": FAKE_KEY, "detail": f"password={FAKE_PASSWORD}", "token": "tok-0987654321",
                "nested": {"x": [FAKE_SECRET]}},
        key=FAKE_KEY,
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="workbench.alerts"):
        d = al.send(leaky)
    assert d.ok, d.channels
    left = [
        *hook.raw, *box.messages, (tmp_path / "alerts.jsonl").read_bytes(),
        caplog.text.encode(), repr(d).encode(),
    ]  # fmt: skip
    assert len(left) == 5 and all(MASK.encode() in x for x in left[:3])
    for blob in left:
        for secret in (FAKE_KEY, FAKE_SECRET, FAKE_PASSWORD, "tok-0987654321", hook.url):
            assert secret.encode() not in blob


def test_wb_alert_test_reaches_every_configured_channel(
    hook: Hook, smtp: tuple[Mailbox, int], tmp_path: Path, isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    box, port = smtp
    monkeypatch.setenv("WB_ALERTS__WEBHOOK_URL", hook.url)
    monkeypatch.setenv("WB_ALERTS__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("WB_ALERTS__SMTP_PORT", str(port))
    monkeypatch.setenv("WB_ALERTS__SMTP_TLS", "none")
    monkeypatch.setenv("WB_ALERTS__EMAIL_TO", "[ops@example.com]")
    monkeypatch.setenv("WB_ALERTS__HISTORY_PATH", str(tmp_path / "alerts.jsonl"))
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    res = runner.invoke(app, ["alert", "test"])
    assert res.exit_code == 0, res.output
    assert "log: ok" in res.output and "webhook: ok" in res.output and "email: ok" in res.output
    assert len(hook.bodies) == 1 and "workbench test alert" in hook.bodies[0]["text"]
    assert len(box.messages) == 1
    # a second test is sent too (tests bypass dedupe); a dead webhook makes it exit 1
    hook.status = 500
    res = runner.invoke(app, ["alert", "test"])
    assert res.exit_code == 1 and "HTTP 500" in res.output and len(box.messages) == 2
    recent = runner.invoke(app, ["alert", "recent", "--json"])
    assert recent.exit_code == 0 and recent.output.count('"kind": "test"') == 2
