"""Alpaca market data (stocks and crypto) through alpaca-py, page by page under our own control.

alpaca-py paginates on its own and cannot bound pages or rate-limit each page, so the page loop
is ours: requests are built with the SDK's request models (:class:`StockBarsRequest`,
:class:`CryptoBarsRequest`), sent to the SDK clients' base URL with their auth headers through one
rate-limited, retrying session (:mod:`._alpaca_http`), and parsed with the SDK's bar mapping.
Symbols with a ``/`` (``BTC/USD``) are crypto (``/v1beta3/crypto/us/bars``); the rest are stocks
(``/v2/stocks/bars``, feed and adjustment from config).

Ingest (:func:`workbench.data.ingest.ingest`) calls :meth:`AlpacaSource.fetch` once per chunk, so
a chunk is fetched completely (every page) before anything is written, and a page bound that is
hit raises instead of truncating.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.mappings import BAR_MAPPING
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from pydantic import SecretStr

from workbench.data.ratelimit import RateLimiter, process_limiter
from workbench.data.schema import BAR_SCHEMA, empty_bars, validate_bars
from workbench.data.sources._alpaca_assets import AlpacaAssets
from workbench.data.sources._alpaca_client import (
    base_url,
    crypto_client,
    public_url,
    resolve_keys,
    stock_client,
    wire_params,
)
from workbench.data.sources._alpaca_http import AlpacaHttp, RetryPolicy
from workbench.data.sources.base import register_source
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

__all__ = ["AlpacaAssets", "AlpacaSource", "RateLimiter", "RetryPolicy", "bars_frame", "is_crypto"]

log = logging.getLogger("workbench.data.alpaca")

DEFAULT_DATA_URL = "https://data.alpaca.markets"
PAGE_SIZE = 10_000  # Alpaca's maximum page size (alpaca.common.constants.DATA_V2_MAX_LIMIT)
SIP_DELAY = timedelta(minutes=15)  # free plans may not query the last 15 minutes of SIP data
_UNITS = {"Min": TimeFrameUnit.Minute, "Hour": TimeFrameUnit.Hour, "Day": TimeFrameUnit.Day}
_CONTRACT = {"timestamp": "ts"}  # SDK field name -> bar contract column (others are equal)
_WIRE_SCHEMA = {
    "t": pl.String(),
    "o": pl.Float64(),
    "h": pl.Float64(),
    "l": pl.Float64(),
    "c": pl.Float64(),
    "v": pl.Float64(),
    "n": pl.Int64(),
    "vw": pl.Float64(),
}
_RENAME = {k: _CONTRACT.get(v, v) for k, v in BAR_MAPPING.items()}


def is_crypto(symbol: str) -> bool:
    """Return whether ``symbol`` is a crypto pair (``BTC/USD``) rather than a stock."""
    return "/" in symbol


def sdk_timeframe(tf: Timeframe) -> TimeFrame:
    """Return alpaca-py's :class:`TimeFrame` for a workbench timeframe (``5Min`` -> ``5Min``)."""
    return TimeFrame(tf.amount, _UNITS[tf.unit])


def _utc(ts: datetime) -> datetime:
    if not isinstance(ts, datetime):
        raise SourceError(
            f"AlpacaSource.fetch needs datetimes for start/end, got {type(ts).__name__} {ts!r}. "
            "Fix: pass timezone-aware datetimes (ingest() does this for you)."
        )
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def bars_frame(raw: dict[str, list[dict[str, Any]]]) -> pl.DataFrame:
    """Turn Alpaca's ``{symbol: [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]}`` into bars.

    Uses alpaca-py's ``BAR_MAPPING`` for the field names; values are taken as sent.
    """
    frames = [
        pl.from_dicts(rows, schema=_WIRE_SCHEMA, strict=False).with_columns(symbol=pl.lit(sym))
        for sym, rows in raw.items()
        if rows
    ]
    if not frames:
        return empty_bars()
    df = pl.concat(frames).rename(_RENAME)
    df = df.with_columns(pl.col("ts").str.to_datetime(time_unit="us", time_zone="UTC"))
    return df.select(list(BAR_SCHEMA))


@register_source("alpaca")
class AlpacaSource:
    """Historical bars from Alpaca (stocks and crypto), rate-limited, retried, page-bounded.

    Parameters
    ----------
    key_id, secret : str or SecretStr, optional
        API keys; default ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY`` from the environment.
    data_url : str
        Market-data base URL without version (``alpaca.data_url``); tests point it at a stub.
    feed : {"iex", "sip"}
        Stock data feed.
    adjustment : {"raw", "split", "dividend", "all"}
        Corporate-action adjustment of stock bars.
    free_plan : bool
        With ``feed="sip"``, clamp ``end`` to 15 minutes ago (free plans may not ask for more).
    max_pages_per_chunk : int
        Pages one :meth:`fetch` may request per endpoint before it raises.
    limiter : RateLimiter, optional
        Default: the process-wide ``alpaca`` limiter at ``rate_limit_per_minute``.
    retry : RetryPolicy, optional
        Retries, timeout and backoff of each request.
    rate_limit_per_minute : int
        Budget of the default limiter.
    page_size : int
        ``limit`` sent with each page (Alpaca caps it at 10000).
    now : callable, optional
        Wall clock returning an aware UTC datetime (for the SIP clamp).

    Raises
    ------
    CredentialsError
        If keys are neither given nor in the environment.
    """

    name = "alpaca"
    extended_hours = True  # Alpaca's intraday stock bars include pre- and post-market trading

    def __init__(
        self,
        *,
        key_id: str | SecretStr | None = None,
        secret: str | SecretStr | None = None,
        data_url: str = DEFAULT_DATA_URL,
        feed: Literal["iex", "sip"] = "iex",
        adjustment: Literal["raw", "split", "dividend", "all"] = "all",
        free_plan: bool = True,
        max_pages_per_chunk: int = 1000,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        rate_limit_per_minute: int = 200,
        page_size: int = PAGE_SIZE,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if feed not in ("iex", "sip"):
            raise ConfigError(
                f"alpaca.feed must be 'iex' or 'sip'. Got {feed!r} instead. Fix: set alpaca.feed: iex "
                "(free) or sip (paid plan, or free with 15-minute delay)."
            )
        if adjustment not in ("raw", "split", "dividend", "all"):
            raise ConfigError(
                f"alpaca.adjustment must be one of raw, split, dividend, all. Got {adjustment!r} instead."
            )
        if max_pages_per_chunk < 1:
            raise ConfigError(
                f"alpaca.max_pages_per_chunk must be >= 1. Got {max_pages_per_chunk!r} instead."
            )
        if not 1 <= page_size <= PAGE_SIZE:
            raise ConfigError(f"page_size must be in 1..{PAGE_SIZE}. Got {page_size!r} instead.")
        keys = resolve_keys(key_id, secret)
        self.data_url = base_url(data_url, "data_url")
        self.feed = feed
        self.adjustment = adjustment
        self.free_plan = free_plan
        self.max_pages_per_chunk = max_pages_per_chunk
        self.page_size = page_size
        self.limiter = limiter or process_limiter("alpaca", rate_limit_per_minute, 60.0)
        self.http = AlpacaHttp(self.limiter, retry)
        self._now = now or (lambda: datetime.now(UTC))
        self._stock = stock_client(keys, self.data_url)
        self._crypto = crypto_client(keys, self.data_url)
        self.pages = 0  # pages fetched by this source (for reports and benchmarks)

    @classmethod
    def from_config(
        cls,
        cfg: WorkbenchConfig,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> AlpacaSource:
        """Build the source from ``cfg.alpaca`` and keys from the environment.

        Raises
        ------
        CredentialsError
            If ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY`` are not set.
        """
        a = cfg.alpaca
        sec = cfg.secrets
        return cls(
            key_id=sec.apca_api_key_id,
            secret=sec.apca_api_secret_key,
            data_url=a.data_url,
            feed=a.feed,
            adjustment=a.adjustment,
            free_plan=a.free_plan,
            max_pages_per_chunk=a.max_pages_per_chunk,
            limiter=limiter,
            retry=retry
            or RetryPolicy(
                max_retries=a.max_retries, timeout=a.timeout_seconds, deadline=a.deadline_seconds
            ),
            rate_limit_per_minute=a.rate_limit_per_minute,
        )

    def __repr__(self) -> str:
        return (
            f"AlpacaSource(data_url={public_url(self.data_url)!r}, feed={self.feed!r}, "
            f"adjustment={self.adjustment!r}, limiter={self.limiter!r})"
        )

    def provenance(self) -> dict[str, str]:
        """Describe where bars come from: endpoint, feed and adjustment (never keys)."""
        return {
            "source": self.name,
            "data_url": public_url(self.data_url),
            "feed": self.feed,
            "adjustment": self.adjustment,
        }

    def stock_end(self, end: datetime) -> datetime:
        """Return ``end`` clamped to 15 minutes ago for SIP on the free plan, else ``end``."""
        if self.feed == "sip" and self.free_plan:
            latest = self._now() - SIP_DELAY
            if end > latest:
                log.info(
                    "alpaca: free plan + SIP feed, end clamped from %s to %s",
                    end.isoformat(),
                    latest.isoformat(),
                )
                return latest
        return end

    def fetch(
        self, symbols: Sequence[str], timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Return every bar of ``symbols`` with ``start <= ts < end``, all pages, validated.

        Parameters
        ----------
        symbols : sequence of str
            Stock tickers and/or crypto pairs (``BTC/USD``).
        timeframe : str or Timeframe
        start, end : datetime
            Half-open UTC window (naive means UTC).

        Raises
        ------
        SourceError
            When a request fails after its retries, a page is not Alpaca-shaped, or the page bound
            is hit (nothing of the chunk is returned then).
        CredentialsError
            When the server rejects the keys.
        """
        tf = Timeframe.parse(timeframe)
        lo, hi = _utc(start), _utc(end)
        syms = list(dict.fromkeys(symbols))
        stocks = [s for s in syms if not is_crypto(s)]
        cryptos = [s for s in syms if is_crypto(s)]
        frames = []
        if stocks:
            s_hi = self.stock_end(hi)
            if s_hi > lo:
                req = StockBarsRequest(
                    symbol_or_symbols=stocks,
                    timeframe=sdk_timeframe(tf),
                    start=lo,
                    end=s_hi,
                    adjustment=Adjustment(self.adjustment),
                    feed=DataFeed(self.feed),
                )
                frames.append(self._pages(self._stock, "/stocks/bars", req))
        if cryptos:
            req = CryptoBarsRequest(
                symbol_or_symbols=cryptos, timeframe=sdk_timeframe(tf), start=lo, end=hi
            )
            frames.append(self._pages(self._crypto, "/crypto/us/bars", req))
        if not frames:
            return empty_bars()
        bars = pl.concat(frames)
        # Alpaca's end is inclusive; the source protocol's is not.
        return validate_bars(bars.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)))

    def _pages(self, client: Any, path: str, request: Any) -> pl.DataFrame:
        params: dict[str, Any] = wire_params(request.to_request_fields())
        params["limit"] = self.page_size
        what = f"{params.get('symbols')} {params.get('timeframe')} {params.get('start')}..{params.get('end')}"
        raw: dict[str, list[dict[str, Any]]] = defaultdict(list)
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        while True:
            if token is not None:
                params["page_token"] = token
            body = self.http.get_json(client, path, params)
            pages += 1
            self.pages += 1
            for sym, rows in _page_bars(body, path).items():
                raw[sym].extend(rows)
            token = body.get("next_page_token") or None
            if token is None:
                break
            if token in seen:
                raise SourceError(
                    f"alpaca {path} returned next_page_token {token!r} twice for {what}; the server "
                    "is looping. Nothing of this chunk was written. Fix: report it; retry later."
                )
            seen.add(token)
            if pages >= self.max_pages_per_chunk:
                raise SourceError(
                    f"alpaca {path}: pagination bound hit for {what}: more than "
                    f"alpaca.max_pages_per_chunk={self.max_pages_per_chunk} pages (next_page_token "
                    "still set). Nothing of this chunk was written. Fix: raise the bound "
                    f"(WB_ALPACA__MAX_PAGES_PER_CHUNK={self.max_pages_per_chunk * 4}) or make chunks "
                    "smaller (ingest.chunk_days / ingest.chunk_symbols)."
                )
        return bars_frame(raw)


def _page_bars(body: Any, path: str) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(body, dict) or "bars" not in body:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise SourceError(
            f"alpaca {path}: a page without 'bars' (got {keys}). Fix: check that alpaca.data_url "
            "points at an Alpaca market-data server."
        )
    bars = body["bars"] or {}
    if not isinstance(bars, dict) or not all(isinstance(v, list) for v in bars.values()):
        raise SourceError(
            f"alpaca {path}: 'bars' must map symbol -> list of bars, got {type(bars).__name__}. "
            "Fix: check that alpaca.data_url points at an Alpaca market-data server."
        )
    return bars
