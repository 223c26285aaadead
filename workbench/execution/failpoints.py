"""Named crash points for the crash-safety suite: off unless ``WB_FAILPOINTS`` is set.

``WB_FAILPOINTS="intent.after_commit:3"`` kills the process with SIGKILL the 3rd time the engine
passes that point (several points separated by commas). Like fail-rs failpoints: a no-op dict
lookup in normal runs, a real, uncatchable kill in tests, so restarts meet the state a power
cut or an OOM kill leaves.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = (
    "intent.before_commit",  # decided, nothing written
    "intent.after_commit",  # intent durable, order not sent
    "submit.after_accept",  # the broker has the order, its answer is not recorded
    "fill.before_record",  # an event with a fill arrived, not recorded
    "fill.after_record",  # fill recorded, not booked into the risk engine
    "bar.before_progress",  # bar processed, not marked processed
)


def _parse(spec: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"WB_FAILPOINTS: unknown point {name!r}; known: {list(POINTS)}")
        out[name] = int(n or 1)
    return out


_ARMED = _parse(os.environ.get("WB_FAILPOINTS", ""))
_SEEN: Counter[str] = Counter()


def arm(spec: str) -> None:
    """Arm points from a ``WB_FAILPOINTS``-style spec (a forked test child re-arms with this)."""
    global _ARMED
    _ARMED = _parse(spec)
    _SEEN.clear()


def hit(name: str) -> None:
    """Pass crash point ``name`` (kills the process when armed for this pass)."""
    if not _ARMED:
        return
    _SEEN[name] += 1
    if _ARMED.get(name) == _SEEN[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def seen() -> dict[str, int]:
    """How often each point was passed (armed runs only)."""
    return dict(_SEEN)
