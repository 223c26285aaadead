"""Alpaca trading endpoints the data layer reads: asset facts (``/v2/assets``) and the clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from alpaca.trading.models import Asset, Clock
from pydantic import SecretStr

from workbench.data.assets import AssetFacts
from workbench.data.ratelimit import RateLimiter, process_limiter
from workbench.data.sources._alpaca_client import base_url, resolve_keys, trading_client
from workbench.data.sources._alpaca_http import AlpacaHttp, RetryPolicy
from workbench.errors import SourceError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

DEFAULT_TRADING_URL = "https://paper-api.alpaca.markets"


def easy_to_borrow_of(raw: Mapping[str, Any]) -> bool:
    """Whether a raw ``/v2/assets`` payload says the asset is easy to borrow.

    Alpaca deprecated ``easy_to_borrow`` for ``borrow_status`` in 2026 and may omit either:
    ``easy_to_borrow`` wins when present; else ``borrow_status`` (``easy_to_borrow``/``etb`` =
    easy, anything else, e.g. ``hard_to_borrow``, = hard); with neither, ``shortable`` decides.
    """
    etb = raw.get("easy_to_borrow")
    if isinstance(etb, bool):
        return etb
    status = raw.get("borrow_status")
    if isinstance(status, str) and status:
        return status.strip().lower() in ("easy_to_borrow", "etb", "easy")
    return bool(raw.get("shortable", False))


def facts_from_payload(raw: Mapping[str, Any]) -> AssetFacts:
    """Return :class:`AssetFacts` from a raw asset payload, tolerant of schema drift (missing
    ``easy_to_borrow``, a ``borrow_status`` instead, unknown fields)."""
    symbol = raw.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise SourceError(
            f"asset payload without a symbol: {dict(raw)!r:.200}. Fix: check alpaca.trading_url "
            "points at an Alpaca trading API."
        )
    return AssetFacts(
        symbol=symbol,
        shortable=bool(raw.get("shortable", False)),
        easy_to_borrow=easy_to_borrow_of(raw),
        fractionable=bool(raw.get("fractionable", False)),
        marginable=bool(raw.get("marginable", False)),
        tradable=bool(raw.get("tradable", False)),
    )


def facts_of(asset: Asset) -> AssetFacts:
    """Return the workbench's :class:`AssetFacts` for an alpaca-py :class:`Asset`."""
    return AssetFacts(
        symbol=asset.symbol,
        shortable=bool(asset.shortable),
        easy_to_borrow=bool(asset.easy_to_borrow),
        fractionable=bool(asset.fractionable),
        marginable=bool(asset.marginable),
        tradable=bool(asset.tradable),
    )


class AlpacaAssets:
    """Read asset facts and the market clock through TradingClient's base URL, rate-limited.

    Parameters
    ----------
    key_id, secret : str or SecretStr, optional
        Default ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``.
    trading_url : str
        Trading REST base URL without version (``alpaca.trading_url``).
    limiter, retry, rate_limit_per_minute
        As for :class:`~workbench.data.sources.alpaca.AlpacaSource` (same process-wide limiter).
    """

    def __init__(
        self,
        *,
        key_id: str | SecretStr | None = None,
        secret: str | SecretStr | None = None,
        trading_url: str = DEFAULT_TRADING_URL,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        rate_limit_per_minute: int = 200,
    ) -> None:
        keys = resolve_keys(key_id, secret)
        self.trading_url = base_url(trading_url, "trading_url")
        self.limiter = limiter or process_limiter("alpaca", rate_limit_per_minute, 60.0)
        self.http = AlpacaHttp(self.limiter, retry)
        self._client = trading_client(keys, self.trading_url)

    @classmethod
    def from_config(
        cls,
        cfg: WorkbenchConfig,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> AlpacaAssets:
        """Build from ``cfg.alpaca`` with keys from the environment."""
        a = cfg.alpaca
        return cls(
            key_id=cfg.secrets.apca_api_key_id,
            secret=cfg.secrets.apca_api_secret_key,
            trading_url=a.trading_url,
            limiter=limiter,
            retry=retry
            or RetryPolicy(
                max_retries=a.max_retries, timeout=a.timeout_seconds, deadline=a.deadline_seconds
            ),
            rate_limit_per_minute=a.rate_limit_per_minute,
        )

    def __repr__(self) -> str:
        return f"AlpacaAssets(trading_url={self.trading_url!r})"

    def get(self, symbol: str) -> AssetFacts:
        """Return the facts of one symbol (``GET /v2/assets/{symbol}``)."""
        try:
            raw = self.http.get_json(self._client, f"/assets/{quote(symbol, safe='')}")
        except SourceError as exc:
            if "HTTP 404" in str(exc):
                raise SourceError(
                    f"Alpaca has no asset {symbol!r}. Fix: check the symbol (crypto pairs are "
                    "written 'BTC/USD')."
                ) from None
            raise
        return facts_from_payload(raw)

    def all(self, status: str | None = "active") -> list[AssetFacts]:
        """Return the facts of every asset (``GET /v2/assets``), active ones by default."""
        params: dict[str, Any] = {"status": status} if status else {}
        raw = self.http.get_json(self._client, "/assets", params)
        if not isinstance(raw, list):
            raise SourceError(
                f"GET /v2/assets returned {type(raw).__name__}, not a list. Fix: check "
                "alpaca.trading_url points at an Alpaca trading API."
            )
        return [facts_from_payload(a) for a in raw]

    def clock(self) -> Clock:
        """Return the market clock (``GET /v2/clock``): timestamp, is_open, next open and close."""
        return Clock(**self.http.get_json(self._client, "/clock"))
