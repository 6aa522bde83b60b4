"""Retry delays: exponential, capped, with jitter that is random-looking yet reproducible."""

from __future__ import annotations

import hashlib

from kubestep.api.workflow import Backoff


def jitter_fraction(*key: object) -> float:
    """A number in [0, 1) derived from ``key``: runs spread out, yet a decision replays identically."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def delay(policy: Backoff, failures: int, *key: object) -> float:
    """Seconds to wait after the ``failures``-th failed attempt.

    ``initial * factor^(n-1)``, capped at ``max``, plus up to ``jitter``.
    """
    initial, factor, cap, jitter = policy.delays()
    base = min(cap, initial * factor ** max(0, failures - 1))
    return base + jitter * jitter_fraction(*key, failures)
