"""One rate-limited, retrying GET for every Alpaca REST call the workbench makes.

alpaca-py's own ``RESTClient._request`` retries 429/504 three times with a fixed 3 s sleep, ignores
the rate-limit headers and sends no timeout. We keep the SDK for what it is good at (credentials,
base URL and API version, auth headers, request models, response mappings and models) and send each
page ourselves: through the process-wide :class:`~workbench.data.ratelimit.RateLimiter`, with a
per-request timeout inside a total deadline per call (connect, read, retries and waits together:
25 s by default, so a server that accepts connections and never answers fails in well under
30 s, naming the endpoint), and with tenacity deciding when to retry:

* HTTP 429: wait what ``Retry-After`` or ``X-RateLimit-Reset`` says (capped), else exponential
  backoff with jitter; the limiter is paused for everyone meanwhile;
* HTTP 5xx, timeouts, dropped connections and unparsable bodies: exponential backoff with jitter;
* anything else (4xx): no retry, a clear error.

The deadline is one concept for every Alpaca network call of the workbench: :class:`RetryPolicy`
says how long a call may take, :meth:`RetryPolicy.start` gives the :class:`Deadline` a call (and
everything it does to resolve itself: the broker's order lookups after a submit without an
answer, a websocket's reconnects until its first connection) cuts its timeouts and waits to, and
:func:`deadline_message` is the error text when it runs out.

Nothing here logs or raises with headers, so the keys never leave the session.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from workbench.data.ratelimit import RateLimiter
from workbench.errors import CredentialsError, SourceError

log = logging.getLogger("workbench.data.alpaca")

_BODY_SHOWN = 200
DEFAULT_DEADLINE = 25.0
"""Seconds one call may take in total by default (the dead-endpoint case fails within 30 s)."""
_MIN_ATTEMPT = 0.05  # no attempt starts with less than this left before the deadline
MIN_ATTEMPT = _MIN_ATTEMPT


@dataclass(frozen=True, slots=True)
class Deadline:
    """The moment one call must be done by: ``total`` seconds after it started, on ``clock``."""

    due: float
    total: float
    clock: Callable[[], float] = time.monotonic

    def left(self) -> float:
        """Seconds left (negative once it has passed)."""
        return self.due - self.clock()

    @property
    def expired(self) -> bool:
        """True when too little is left to start another attempt."""
        return self.left() < _MIN_ATTEMPT

    def cap(self, seconds: float) -> float:
        """``seconds`` cut to what is left (an attempt's timeout: never below a floor)."""
        return max(_MIN_ATTEMPT, min(seconds, self.left()))

    def wait(self, seconds: float) -> float:
        """``seconds`` cut to what is left (a wait between attempts: may be 0)."""
        return max(0.0, min(seconds, self.left()))


def deadline_message(
    what: str, endpoint: str, deadline: float | None, attempts: int, last: str, settings: str
) -> str:
    """The error of a call that got no usable answer (before its ``deadline``, when that is what
    stopped it): it names the endpoint and says to check it (the setting that names it, the
    network, Alpaca's status page), not to wait longer."""
    within = f" within the {deadline:g} s deadline" if deadline is not None else ""
    return (
        f"{what}: the endpoint {endpoint} gave no usable answer{within} ({attempts} "
        f"attempt(s); last: {last}). Fix: check that this endpoint is the right one, up and "
        f"reachable ({settings}, your network or proxy, https://status.alpaca.markets); waiting "
        "longer will not help."
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request tries.

    Parameters
    ----------
    max_retries : int
        Retries after the first attempt (429, 5xx, timeouts, dropped connections, bad bodies).
    timeout : float
        Seconds to wait for the server (connect and read) in one attempt.
    deadline : float
        Seconds one call may take in total: attempts, their timeouts and the waits between them.
        Each attempt's timeout and each wait are cut to what is left; no attempt starts after it.
    backoff_initial, backoff_max : float
        Exponential backoff with full jitter: the n-th wait is uniform in
        ``[0, min(backoff_max, backoff_initial * 2**n)]``.
    rate_limit_wait_max : float
        Upper bound on a wait taken from a 429's ``Retry-After``/``X-RateLimit-Reset``.
    sleep : callable
        Sleep function used between attempts (tests inject a fast one).
    """

    max_retries: int = 6
    timeout: float = 10.0
    deadline: float = DEFAULT_DEADLINE
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    rate_limit_wait_max: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def start(self) -> Deadline:
        """The deadline of a call starting now."""
        return Deadline(self.clock() + self.deadline, self.deadline, self.clock)

    def __post_init__(self) -> None:
        if not self.deadline > 0 or not self.timeout > 0:
            raise SourceError(
                f"RetryPolicy needs timeout > 0 and deadline > 0 seconds; got timeout="
                f"{self.timeout!r}, deadline={self.deadline!r}. Fix: alpaca.timeout_seconds and "
                "alpaca.deadline_seconds (WB_ALPACA__DEADLINE_SECONDS) must be positive."
            )


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested wait, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def rate_limit_wait(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Return the seconds a 429 asks us to wait, from ``Retry-After`` or ``X-RateLimit-Reset``.

    ``Retry-After`` is seconds or an HTTP date; ``X-RateLimit-Reset`` is the epoch second at which
    the budget refills. Returns None when neither header is usable.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ra = lower.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now_epoch)
    reset = lower.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - now_epoch)
        except ValueError:
            return None
    return None


def public_base(url: str) -> str:
    """A base URL as shown in messages: scheme, host and port only (no user info, no query)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}" if u.scheme else url


def _server_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        text = body.get("message", resp.text) if isinstance(body, dict) else resp.text
    except ValueError:
        text = resp.text
    text = " ".join(str(text).split())
    return text[:_BODY_SHOWN] + ("..." if len(text) > _BODY_SHOWN else "")


class AlpacaHttp:
    """Send GETs to an alpaca-py client's base URL, rate-limited and retried.

    Parameters
    ----------
    limiter : RateLimiter
        Shared by every request of the process (see :func:`process_limiter`).
    policy : RetryPolicy
    session : requests.Session, optional
        Connection pool (default: a new session).
    wall_clock : callable
        Epoch seconds, to read ``X-RateLimit-Reset``.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        policy: RetryPolicy | None = None,
        *,
        session: requests.Session | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.session = session or requests.Session()
        self._wall = wall_clock
        self._backoff = wait_random_exponential(
            multiplier=self.policy.backoff_initial, max=self.policy.backoff_max
        )
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"AlpacaHttp({self.limiter!r}, retries={self.policy.max_retries})"

    def get_json(self, client: Any, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` on an alpaca-py client's base URL and API version; return the parsed JSON.

        Parameters
        ----------
        client : alpaca.common.rest.RESTClient
            Supplies base URL, API version (``v2``, ``v1beta3``) and auth headers.
        path : str
            Path below the version, e.g. ``/stocks/bars``.
        params : mapping, optional
            Query parameters (plain strings and numbers).

        Raises
        ------
        SourceError
            When the retries are exhausted or the server rejects the request (4xx).
        CredentialsError
            On HTTP 401/403.
        """
        url = f"{client._base_url}/{client._api_version}{path}"
        shown = f"GET /{client._api_version}{path}"
        headers = client._get_default_headers()
        pol = self.policy
        dl = pol.start()
        attempts = Counter[str]()

        def out_of_time(rs: RetryCallState) -> bool:
            return dl.expired

        retrying = Retrying(
            stop=stop_after_attempt(pol.max_retries + 1) | out_of_time,
            wait=lambda rs: dl.wait(self._wait(rs)),
            retry=retry_if_exception_type(_Transient),
            sleep=self.policy.sleep,
            before_sleep=lambda rs: self._log_retry(shown, rs),
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, shown, dict(params or {}), headers, dl, attempts)
        except _Transient as exc:
            self.stats["gave_up"] += 1
            n = attempts["n"]
            endpoint = f"{public_base(client._base_url)}/{client._api_version}{path}"
            if exc.reason.startswith("HTTP 429") or (
                exc.reason.startswith("HTTP 5") and not dl.expired
            ):
                raise SourceError(
                    f"{shown} at {endpoint} failed after {n} attempt(s): {exc.reason}. Fix: the "
                    "server is up but failing; check https://status.alpaca.markets, or raise "
                    "alpaca.max_retries (WB_ALPACA__MAX_RETRIES=...)."
                ) from exc
            settings = "alpaca.data_url / alpaca.trading_url"
            msg = deadline_message(shown, endpoint, pol.deadline, n, exc.reason, settings)
            raise SourceError(msg) from exc

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, _Transient) and exc.reason.startswith("HTTP 429"):
            wait = (
                min(exc.retry_after, self.policy.rate_limit_wait_max)
                if exc.retry_after is not None
                else self._backoff(rs)
            )
            self.limiter.pause_for(wait)
            return wait
        return self._backoff(rs)

    def _log_retry(self, shown: str, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        wait = rs.next_action.sleep if rs.next_action else 0.0
        log.warning(
            "%s: %s; retry %d/%d in %.2fs",
            shown,
            getattr(exc, "reason", exc),
            rs.attempt_number,
            self.policy.max_retries,
            wait,
        )

    def _attempt(
        self,
        url: str,
        shown: str,
        params: dict[str, Any],
        headers: dict,
        dl: Deadline,
        attempts: Counter[str],
    ) -> Any:
        self.limiter.acquire()
        self.stats["requests"] += 1
        attempts["n"] += 1
        timeout = dl.cap(self.policy.timeout)
        try:
            resp = self.session.get(
                url,
                params=params,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except (
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
        ) as exc:
            raise SourceError(
                f"{shown}: the base URL is not a valid http(s) URL ({exc}). Fix: set alpaca.data_url / "
                "alpaca.trading_url (or WB_ALPACA__DATA_URL) to e.g. https://data.alpaca.markets."
            ) from None
        except requests.exceptions.Timeout:
            self.stats["timeout"] += 1
            raise _Transient(f"no answer within {timeout:.3g}s (timeout)") from None
        except requests.exceptions.RequestException as exc:
            self.stats["dropped"] += 1
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        status = resp.status_code
        if status == 429:
            self.stats["429"] += 1
            raise _Transient("HTTP 429 rate limited", rate_limit_wait(resp.headers, self._wall()))
        if status >= 500:
            self.stats["5xx"] += 1
            raise _Transient(f"HTTP {status} ({_server_message(resp)})")
        if status in (401, 403):
            raise CredentialsError(
                f"{shown}: HTTP {status}, the server rejected the credentials ({_server_message(resp)}). "
                "Fix: check APCA_API_KEY_ID / APCA_API_SECRET_KEY (paper and live keys differ, and "
                "SIP data needs a paid plan: set alpaca.feed: iex otherwise)."
            )
        if status >= 300:
            raise SourceError(
                f"{shown}: HTTP {status} ({_server_message(resp)}) for params {params}. "
                "Fix: check the symbols, the window and alpaca.feed/adjustment; a 3xx means the base "
                "URL is wrong (alpaca.data_url must have no path, e.g. https://data.alpaca.markets)."
            )
        try:
            return resp.json()
        except ValueError:
            self.stats["malformed"] += 1
            raise _Transient(
                f"HTTP {status} with a body that is not valid JSON ({len(resp.content)} bytes)"
            ) from None
