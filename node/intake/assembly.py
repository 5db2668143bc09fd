"""Study assembly: DICOM has no "study complete" signal, so a study is stable after a quiet period."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StudyAssembler:
    """Decides when an intake is stable. Pure: no I/O, no asyncio; time comes from `now`. Thread-safe:
    association threads note instances while the loop's routing task asks for stable keys.

    Keys are intake job ids (one per study while it is receiving).
    """

    def __init__(self, quiet_period_s: float, now: Callable[[], float] = time.monotonic) -> None:
        if quiet_period_s <= 0:
            raise ValueError(f"quiet_period_s must be > 0, got {quiet_period_s}")
        self.quiet_period_s = quiet_period_s
        self._now = now
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def instance_received(self, key: str) -> bool:
        """Note an instance of `key`; True when `key` is new, the only case that can bring the next deadline
        forward (a known key's deadline only moves later)."""
        with self._lock:
            new = key not in self._last_seen
            self._last_seen[key] = self._now()
        return new

    def pop_stable(self) -> list[str]:
        """Keys quiet for at least the quiet period, oldest first; they are forgotten once returned."""
        with self._lock:
            cutoff = self._now() - self.quiet_period_s
            stable = sorted((t, k) for k, t in self._last_seen.items() if t <= cutoff)
            for _, k in stable:
                del self._last_seen[k]
        return [k for _, k in stable]

    def next_deadline(self) -> float | None:
        """Seconds until the next key may become stable, or None when nothing is pending."""
        with self._lock:
            if not self._last_seen:
                return None
            oldest = min(self._last_seen.values())
        return max(0.0, oldest + self.quiet_period_s - self._now())

    def __len__(self) -> int:
        return len(self._last_seen)
