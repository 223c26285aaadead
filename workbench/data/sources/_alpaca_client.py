"""Keys and alpaca-py clients: resolve credentials, build clients with the SDK's own retry disabled."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from workbench.errors import ConfigError, CredentialsError

KEY_ENV = "APCA_API_KEY_ID"
SECRET_ENV = "APCA_API_SECRET_KEY"


@dataclass(frozen=True, slots=True)
class Keys:
    """An Alpaca key pair, kept as :class:`SecretStr` so reprs and dumps never show it."""

    key_id: SecretStr
    secret: SecretStr

    def __repr__(self) -> str:
        return "Keys(key_id='**********', secret='**********')"


def resolve_keys(
    key_id: str | SecretStr | None = None, secret: str | SecretStr | None = None
) -> Keys:
    """Return the keys given, else those in ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``.

    Raises
    ------
    CredentialsError
        Naming the missing variable(s) and how to set them (never the values).
    """
    kid = key_id if key_id is not None else os.environ.get(KEY_ENV) or None
    sec = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    kid_s = kid.get_secret_value() if isinstance(kid, SecretStr) else kid
    sec_s = sec.get_secret_value() if isinstance(sec, SecretStr) else sec
    missing = [name for name, v in ((KEY_ENV, kid_s), (SECRET_ENV, sec_s)) if not v]
    if missing:
        raise CredentialsError(
            f"Alpaca credentials missing: {' and '.join(missing)} not set. Fix: export "
            f"{KEY_ENV}=<key id> and {SECRET_ENV}=<secret key> (create paper keys at "
            "https://app.alpaca.markets under 'API Keys'), or use the offline simulator with "
            "--source synthetic."
        )
    return Keys(SecretStr(str(kid_s)), SecretStr(str(sec_s)))


def base_url(url: str, field: str) -> str:
    """Check and normalise a REST base URL (scheme and host, no trailing slash, no version path)."""
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"alpaca.{field} must be an http(s) URL such as https://data.alpaca.markets. "
            f"Got {url!r} instead."
        )
    path = parts.path.rstrip("/")
    if path.endswith(("/v2", "/v1beta3")):
        raise ConfigError(
            f"alpaca.{field} must not include the API version (alpaca-py appends /v2 or /v1beta3). "
            f"Got {url!r}. Fix: drop the version, e.g. {urlunsplit((parts.scheme, parts.netloc, '', '', ''))!r}."
        )
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def public_url(url: str) -> str:
    """Return ``url`` without user info or query, safe for provenance and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def disable_sdk_retry(client: Any) -> Any:
    """Turn off alpaca-py's built-in 429/504 retry (fixed 3 x 3 s) so our limiter is in charge.

    The public clients do not expose the setting; ``RESTClient`` reads these private attributes
    on every request (alpaca-py 0.44, ``alpaca/common/rest.py``).
    """
    client._retry = 0
    client._retry_wait = 0
    client._retry_codes = []
    return client


def wire_params(fields: dict[str, Any]) -> dict[str, str]:
    """Turn ``request.to_request_fields()`` into plain query strings (enums by value)."""
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = v.value if isinstance(v, Enum) else str(v)
    return out


def stock_client(keys: Keys, url: str) -> Any:
    """Return a :class:`StockHistoricalDataClient` on ``url`` with the SDK retry disabled."""
    from alpaca.data.historical.stock import StockHistoricalDataClient

    return disable_sdk_retry(
        StockHistoricalDataClient(
            api_key=keys.key_id.get_secret_value(),
            secret_key=keys.secret.get_secret_value(),
            url_override=url,
        )
    )


def crypto_client(keys: Keys, url: str) -> Any:
    """Return a :class:`CryptoHistoricalDataClient` on ``url`` with the SDK retry disabled."""
    from alpaca.data.historical.crypto import CryptoHistoricalDataClient

    return disable_sdk_retry(
        CryptoHistoricalDataClient(
            api_key=keys.key_id.get_secret_value(),
            secret_key=keys.secret.get_secret_value(),
            url_override=url,
        )
    )


def trading_client(keys: Keys, url: str) -> Any:
    """Return a :class:`TradingClient` on ``url`` with the SDK retry disabled."""
    from alpaca.trading.client import TradingClient

    return disable_sdk_retry(
        TradingClient(
            api_key=keys.key_id.get_secret_value(),
            secret_key=keys.secret.get_secret_value(),
            url_override=url,
        )
    )
