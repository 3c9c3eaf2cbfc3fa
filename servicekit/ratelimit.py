"""Token buckets: a rate limit over time per key (a bearer token's scenario, a client).

Why here: the aggregator limits each token's calls and the gateway each client's requests
the same way (docs/RELIABILITY.md, "Rate limits"). A bucket holds up to ``burst`` tokens and
refills at ``rate`` per second; a call takes one or is refused with the seconds until one
is there (what ``retry-after`` tells the caller). The number of buckets is bounded: past
``max_keys`` the least recently used ones are dropped (a dropped bucket is full again,
so eviction can only ever be lenient).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class TokenBuckets:
    """One token bucket per key, thread-safe."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # tokens, t

    def take(self, key: Hashable) -> float:
        """Take one token of ``key``'s bucket: 0.0 if there was one, else the seconds until
        there will be (nothing is taken then)."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
