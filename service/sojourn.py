"""Is this worker behind? Measured by how long its requests take once their bodies are in.

The batcher's admission rule (service/batcher.py) sees only the model's queue. Under overload
on a CPU the model is rarely the bottleneck: the event loop is, reading, parsing and decoding
requests (a PNG, a JSON array), and those requests wait in socket buffers and in the loop's
ready queue where no queue length can be read. What can be read is the effect: the time from a
request's last body byte to the start of its reply (its "sojourn") grows with that hidden
backlog. It does not grow with a slow client's upload, which comes before the last byte.

The rule is CoDel's (Nichols and Jacobson, "Controlling Queue Delay", 2012): the worker is
overloaded while the *shortest* sojourn among the requests answered in the last window
(``window_s``, 100 ms) was above the target. The minimum, because one big request (1,024 PNGs)
is slow on its own and is no sign of a queue; when even the quickest request of a window waited
longer than the target, everyone did. While overloaded, service/limits.py answers new requests
503 before reading their bodies, which costs a fraction of serving them, so the backlog drains
in about one target's time and the worker is back to full speed. A window with no replies
clears the state (requests still uploading, or one long model call, are not a backlog), and a
worker with nothing in progress is never overloaded.
"""

from __future__ import annotations

import math


class Sojourn:
    def __init__(self, target_s: float, window_s: float = 0.1):
        self.target_s = target_s  # 0: never overloaded
        self.window_s = window_s
        self.window_end = 0.0
        self.window_min = math.inf  # shortest sojourn answered in the current window
        self.last_min = 0.0  # the shortest sojourn of the last window that had replies
        self.overloaded = False

    def answered(self, body_done: float, now: float) -> None:
        """A reply started at ``now`` for a request whose body was complete at ``body_done``
        (time.monotonic() both)."""
        if now >= self.window_end:
            self._close_window(now)
        self.window_min = min(self.window_min, now - body_done)

    def behind(self, in_progress: int, now: float) -> bool:
        """Whether a request arriving ``now`` should be turned away."""
        if not self.target_s or not in_progress:
            return False
        if now >= self.window_end:
            self._close_window(now)
        return self.overloaded

    def _close_window(self, now: float) -> None:
        self.overloaded = self.window_min > self.target_s and self.window_min != math.inf
        if self.window_min != math.inf:
            self.last_min = self.window_min
        self.window_min = math.inf
        self.window_end = now + self.window_s
