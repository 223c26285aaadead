"""Alerts: what went wrong (severity, kind, message, values), where it goes, and how often.

Channels: the log (always; every alert is also appended to ``alerts.history_path`` as one JSON
line), a webhook (``alerts.webhook_url`` / ``WB_ALERTS__WEBHOOK_URL``: one JSON body that Slack
reads as ``text`` and Discord as ``content``) and email over SMTP (``alerts.smtp_*``,
``email_from``, ``email_to``; the password only from ``WB_SMTP_PASSWORD``). Webhook and email get
alerts at ``alerts.min_severity`` and above.

:class:`Alerter` sends an alert once per ``dedupe_seconds`` for the same (kind, key, severity) and
at most ``rate_limit`` alerts of one kind per ``rate_window_seconds``; what it holds back is
counted and reported with the next alert of that kind that goes out. Its clock is injectable.
The history file seeds both rules at start, so a restarted process does not repeat itself.

No secret ever leaves in an alert: before anything is logged or sent, every value of a secret
environment variable (the broker keys, the SMTP password, the webhook URL, and any variable whose
name says key/secret/token/password) is replaced by ``********`` in the message, the key and the
values, and values under a credential-like name are masked whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Protocol

from workbench.config import SECRET_ENV, WorkbenchConfig
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.alerts")

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
MASK = "********"
_SECRET_NAME = re.compile(r"(key|secret|token|password|passwd|credential|webhook)", re.I)
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}
_EMOJI = {"info": "[info]", "warning": "[WARNING]", "critical": "[CRITICAL]"}


class AlertDeliveryError(WorkbenchError):
    """A channel could not deliver an alert."""


@dataclass(frozen=True)
class Alert:
    """One alert.

    Parameters
    ----------
    severity : 'info' | 'warning' | 'critical'
    kind : str
        What sort of problem (``drift``, ``staleness``, ``data_quality``, ``execution_lag``,
        ``performance``, ``model_age``, ``pipeline``, ``session``, ``test``): rate limits are per
        kind.
    message : str
        One sentence a person reads first.
    values : mapping
        The numbers behind it (JSON-able).
    key : str
        What it is about (a feature, a symbol, a pipeline): deduplication is per (kind, key,
        severity); empty means the message.
    ts : datetime, optional
        Set by :class:`Alerter` when it is sent.
    """

    severity: str
    kind: str
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)
    key: str = ""
    ts: datetime | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Alert severity must be one of {list(SEVERITIES)}. Got {self.severity!r} instead."
            )

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}|{self.key or self.message}|{self.severity}"

    def text(self) -> str:
        """One line for chat and the log: severity, kind, message, values."""
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        return f"{_EMOJI[self.severity]} {self.kind}: {self.message}" + (
            f" ({vals})" if vals else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts.isoformat() if self.ts else None,
            "severity": self.severity,
            "kind": self.kind,
            "key": self.key,
            "message": self.message,
            "values": dict(self.values),
        }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------ scrubbing


def secret_values(environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Values that must never appear in an alert: the secret variables' (:data:`SECRET_ENV`),
    any variable named like a credential (6 characters or more), and ``extra`` (longest first)."""
    env = os.environ if environ is None else environ
    out = {env[k] for k in SECRET_ENV if env.get(k)}
    out |= {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}
    out |= {v for v in extra if v}
    return sorted(out, key=len, reverse=True)


class Scrubber:
    """Replace secret values by ``********`` in text and nested values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def text(self, s: str) -> str:
        for sec in self.secrets:
            s = s.replace(sec, MASK)
        return s

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, Mapping):
            return {
                self.text(str(k)): MASK if _SECRET_NAME.search(str(k)) else self.value(x)
                for k, x in v.items()
            }
        if isinstance(v, list | tuple | set):
            return [self.value(x) for x in v]
        if isinstance(v, bool | int | float) or v is None:
            return v
        return self.text(str(v))

    def alert(self, a: Alert) -> Alert:
        return replace(
            a, message=self.text(a.message), key=self.text(a.key), values=self.value(dict(a.values))
        )


# ------------------------------------------------------------------------------------ channels


class Channel(Protocol):
    """Somewhere alerts go."""

    name: str
    min_severity: str

    def send(self, alert: Alert) -> None: ...


class LogChannel:
    """The ``workbench.alerts`` logger (the :class:`Alerter` writes the history file)."""

    name = "log"
    min_severity = "info"

    def send(self, alert: Alert) -> None:
        log.log(_LOG_LEVEL[alert.severity], "%s", alert.text())


class WebhookChannel:
    """POST a JSON body to a Slack or Discord incoming webhook.

    ``fmt='both'`` sends ``{"text", "content", "username"}``: Slack (and Discord's ``/slack``
    endpoint) read ``text``, Discord reads ``content`` (cut to its 2,000 characters). One retry on
    a network error or a 5xx/429 answer.
    """

    name = "webhook"

    def __init__(
        self, url: str, *, fmt: str = "both", timeout: float = 10.0, min_severity: str = "warning"
    ) -> None:
        self.url, self.fmt, self.timeout, self.min_severity = url, fmt, timeout, min_severity

    def payload(self, alert: Alert) -> dict[str, Any]:
        text = alert.text()
        body: dict[str, Any] = {"username": "workbench"}
        if self.fmt in ("both", "slack"):
            body["text"] = text
        if self.fmt in ("both", "discord"):
            body["content"] = text[:2000]
        return body

    def send(self, alert: Alert) -> None:
        data = json.dumps(self.payload(alert)).encode()
        req = urllib.request.Request(
            self.url, data=data, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "workbench-alerts"},
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(2):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        return
                    last = AlertDeliveryError(f"webhook answered HTTP {resp.status}")
            except urllib.error.HTTPError as exc:
                last = AlertDeliveryError(f"webhook answered HTTP {exc.code}")
                if exc.code < 500 and exc.code != 429:
                    break
            except (urllib.error.URLError, OSError) as exc:
                last = AlertDeliveryError(f"webhook unreachable: {getattr(exc, 'reason', exc)}")
        raise last or AlertDeliveryError("webhook delivery failed")


class EmailChannel:
    """Send an alert as a plain-text email over SMTP (STARTTLS, SSL or none; login when a user
    and the password are given)."""

    name = "email"

    def __init__(
        self, host: str, port: int, *, sender: str, to: Iterable[str], tls: str = "starttls",
        user: str | None = None, password: str | None = None, timeout: float = 10.0,
        min_severity: str = "warning", ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.host, self.port, self.sender, self.to = host, port, sender, list(to)
        self.tls, self.user, self._password, self.timeout = tls, user, password, timeout
        self.min_severity = min_severity
        self.ssl_context = ssl_context

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"[workbench] {alert.severity.upper()} {alert.kind}: {alert.message}"[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        body = [alert.message, ""]
        body += [f"{k}: {_fmt(v)}" for k, v in alert.values.items()]
        body += ["", f"kind: {alert.kind}", f"severity: {alert.severity}"]
        body += [
            f"time: {alert.ts.isoformat() if alert.ts else ''}",
            f"host: {socket.gethostname()}",
        ]
        msg.set_content("\n".join(body))
        return msg

    def send(self, alert: Alert) -> None:
        ctx = self.ssl_context or ssl.create_default_context()
        try:
            if self.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ctx
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.tls == "starttls":
                    smtp.starttls(context=ctx)
                if self.user and self._password:
                    smtp.login(self.user, self._password)
                smtp.send_message(self.message(alert))
        except (smtplib.SMTPException, OSError) as exc:
            raise AlertDeliveryError(
                f"email via {self.host}:{self.port} failed: {type(exc).__name__}: {exc}"
            ) from None


# ------------------------------------------------------------------------------------ alerter


@dataclass
class Delivery:
    """What happened to one alert: ``sent``, ``deduplicated`` or ``rate_limited``; per channel
    ``ok`` or the error."""

    alert: Alert
    outcome: str
    channels: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "sent" and all(v == "ok" for v in self.channels.values())


class Alerter:
    """Send alerts to channels with deduplication and a rate limit per kind.

    Parameters
    ----------
    channels : list of Channel
    dedupe_seconds : float
        The same (kind, key, severity) is sent at most once per this window.
    rate_limit, rate_window_seconds
        At most ``rate_limit`` alerts of one kind per window.
    clock : callable, optional
        Returns the current UTC time (default: the wall clock); tests freeze it.
    history_path : Path, optional
        JSON lines of every alert and its outcome (read back at start to seed the rules).
    secrets : iterable of str, optional
        Values to scrub (default: :func:`secret_values` of the environment).
    on_delivery : callable, optional
        Called with each :class:`Delivery` (metrics count them).
    """

    def __init__(
        self,
        channels: Iterable[Channel],
        *,
        dedupe_seconds: float = 3600.0,
        rate_limit: int = 10,
        rate_window_seconds: float = 3600.0,
        clock: Callable[[], datetime] | None = None,
        history_path: Path | None = None,
        secrets: Iterable[str] | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.channels = list(channels)
        self.dedupe = timedelta(seconds=dedupe_seconds)
        self.rate_limit = rate_limit
        self.window = timedelta(seconds=rate_window_seconds)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.history_path = history_path
        self.scrub = Scrubber(secret_values() if secrets is None else secrets)
        self.on_delivery = on_delivery
        self._last: dict[str, datetime] = {}
        self._sent: dict[str, deque[datetime]] = {}
        self._held: dict[str, int] = {}
        self.deliveries: list[Delivery] = []
        self._seed()

    @classmethod
    def from_config(
        cls, cfg: WorkbenchConfig, *, clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None, on_delivery: Callable[[Delivery], None] | None = None,
    ) -> Alerter:  # fmt: skip
        """The configured channels: the log always, the webhook when ``alerts.webhook_url`` is
        set, email when ``alerts.smtp_host`` and ``alerts.email_to`` are."""
        a = cfg.alerts
        history = cfg.path(a.history_path) if a.history_path else None
        channels: list[Channel] = [LogChannel()]
        url = a.webhook_url.get_secret_value() if a.webhook_url else ""
        if url:
            channels.append(
                WebhookChannel(
                    url,
                    fmt=a.webhook_format,
                    timeout=a.timeout_seconds,
                    min_severity=a.min_severity,
                )
            )
        if a.smtp_host and a.email_to:
            pw = cfg.secrets.smtp_password
            channels.append(
                EmailChannel(
                    a.smtp_host, a.smtp_port, sender=a.email_from, to=a.email_to, tls=a.smtp_tls,
                    user=a.smtp_user, password=pw.get_secret_value() if pw else None,
                    timeout=a.timeout_seconds, min_severity=a.min_severity,
                )
            )  # fmt: skip
        return cls(
            channels, dedupe_seconds=a.dedupe_seconds, rate_limit=a.rate_limit,
            rate_window_seconds=a.rate_window_seconds, clock=clock, history_path=history,
            secrets=secret_values(environ, extra=[url]), on_delivery=on_delivery,
        )  # fmt: skip

    def send(self, alert: Alert, *, force: bool = False) -> Delivery:
        """Scrub, deduplicate, rate-limit and deliver one alert; never raises for a channel.

        ``force`` skips deduplication, the rate limit and the severity floors (``wb alert test``).
        """
        now = self.clock()
        alert = self.scrub.alert(replace(alert, ts=now))
        fp = alert.fingerprint
        if not force:
            last = self._last.get(fp)
            if last is not None and now - last < self.dedupe:
                return self._done(Delivery(alert, "deduplicated"))
            sent = self._sent.setdefault(alert.kind, deque())
            while sent and now - sent[0] >= self.window:
                sent.popleft()
            if len(sent) >= self.rate_limit:
                self._held[alert.kind] = self._held.get(alert.kind, 0) + 1
                return self._done(Delivery(alert, "rate_limited"))
        held = self._held.pop(alert.kind, 0)
        if held:
            alert = replace(alert, values={**alert.values, "held_back_since_last": held})
        self._last[fp] = now
        self._sent.setdefault(alert.kind, deque()).append(now)
        d = Delivery(alert, "sent")
        rank = SEVERITIES.index(alert.severity)
        for ch in self.channels:
            if not force and rank < SEVERITIES.index(ch.min_severity):
                continue
            try:
                ch.send(alert)
                d.channels[ch.name] = "ok"
            except Exception as exc:  # a channel's failure never stops the caller
                d.channels[ch.name] = self.scrub.text(f"{type(exc).__name__}: {exc}")
                log.error("alert channel %s failed: %s", ch.name, d.channels[ch.name])
        return self._done(d)

    def send_all(self, alerts: Iterable[Alert]) -> list[Delivery]:
        return [self.send(a) for a in alerts]

    def _done(self, d: Delivery) -> Delivery:
        self.deliveries.append(d)
        if self.history_path is not None:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            row = {**d.alert.to_dict(), "outcome": d.outcome, "channels": d.channels}
            with self.history_path.open("a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
        if self.on_delivery is not None:
            self.on_delivery(d)
        return d

    def _seed(self) -> None:
        """Rebuild the dedupe and rate state from the recent history (a restarted process)."""
        if self.history_path is None or not self.history_path.exists():
            return
        now = self.clock()
        horizon = now - max(self.dedupe, self.window)
        for a in recent_alerts(self.history_path, since=horizon):
            if a.get("outcome") != "sent" or not a.get("ts"):
                continue
            ts = datetime.fromisoformat(a["ts"])
            fp = f"{a['kind']}|{a.get('key') or a['message']}|{a['severity']}"
            self._last[fp] = max(self._last.get(fp, ts), ts)
            if now - ts < self.window:
                self._sent.setdefault(a["kind"], deque()).append(ts)


def recent_alerts(
    path: Path, *, since: datetime | None = None, limit: int | None = None
) -> list[dict]:
    """Alerts recorded in a history file (newest last), optionally since a time / the last N.
    Unreadable lines are skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if since is not None and (not row.get("ts") or datetime.fromisoformat(row["ts"]) < since):
            continue
        out.append(row)
    return out[-limit:] if limit else out


def test_alert(cfg: WorkbenchConfig, *, alerter: Alerter | None = None) -> Delivery:
    """Send a test alert to every configured channel (``wb alert test``), bypassing dedupe,
    rate limits and severity floors."""
    al = alerter or Alerter.from_config(cfg)
    return al.send(
        Alert(
            "info",
            "test",
            "workbench test alert: this channel works",
            values={"host": socket.gethostname(), "channels": [c.name for c in al.channels]},
        ),
        force=True,
    )


test_alert.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
