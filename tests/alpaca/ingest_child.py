"""Run one Alpaca ingest against the stub; the crash test kills this process with SIGKILL.

Usage: python ingest_child.py <stub url> <store root>  (keys from APCA_* in the environment)
"""

from __future__ import annotations

import sys
from datetime import date

from workbench.data.ingest import ingest
from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import RetryPolicy
from workbench.data.sources.alpaca import AlpacaSource
from workbench.data.store import BarStore

SYMBOLS = ["AAPL", "MSFT", "NVDA", "SPY", "TSLA", "BTC/USD"]
START, END = date(2024, 1, 2), date(2024, 1, 5)
CHUNK_DAYS, CHUNK_SYMBOLS = 1, 2


def run(url: str, root: str) -> None:
    src = AlpacaSource(
        data_url=url,
        limiter=RateLimiter(1000, 1.0),
        retry=RetryPolicy(max_retries=8, timeout=2.0, backoff_initial=0.005, backoff_max=0.05),
    )
    ingest(
        src,
        BarStore(root),
        SYMBOLS,
        "1Min",
        START,
        END,
        chunk_days=CHUNK_DAYS,
        chunk_symbols=CHUNK_SYMBOLS,
        progress=False,
    )


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
