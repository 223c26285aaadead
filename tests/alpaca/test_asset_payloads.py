"""Asset payloads after Alpaca's 2026 schema changes: borrow_status instead of easy_to_borrow,
or neither; the risk layer's shortable rule reads the result."""

from __future__ import annotations

import pytest

from workbench.data.sources._alpaca_assets import easy_to_borrow_of, facts_from_payload
from workbench.errors import SourceError

BASE = {
    "id": "904837e3-3b76-47ec-b432-046db621571b",
    "class": "us_equity",
    "exchange": "NASDAQ",
    "symbol": "AAPL",
    "status": "active",
    "tradable": True,
    "marginable": True,
    "shortable": True,
    "fractionable": True,
}


@pytest.mark.parametrize(
    ("extra", "etb"),
    [
        ({"easy_to_borrow": True}, True),
        ({"easy_to_borrow": False, "borrow_status": "easy_to_borrow"}, False),  # the old field wins
        ({"borrow_status": "easy_to_borrow"}, True),
        ({"borrow_status": "hard_to_borrow"}, False),
        ({"borrow_status": "ETB"}, True),
        ({}, True),  # neither: shortable decides
    ],
)
def test_borrow_status_and_easy_to_borrow(extra: dict, etb: bool) -> None:
    facts = facts_from_payload({**BASE, **extra, "new_field_2027": 1})
    assert facts.easy_to_borrow is etb
    assert facts.shortable and facts.fractionable and facts.tradable


def test_missing_fields_are_conservative() -> None:
    facts = facts_from_payload({"symbol": "XYZ"})
    assert not (facts.shortable or facts.tradable or facts.fractionable or facts.easy_to_borrow)
    assert easy_to_borrow_of({"shortable": False}) is False
    with pytest.raises(SourceError, match="asset payload without a symbol"):
        facts_from_payload({"class": "us_equity"})
