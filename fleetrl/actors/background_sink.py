"""Episode writing off the control thread: a robot's control loop hands finished episodes to a queue and goes on.

A sim actor can afford to block while its episode is written (the rate limiter may hold it back on purpose). A
robot cannot: the arm must not wait at the end of an episode for Reverb, and the next reset should happen at the
robot's pace. :class:`BackgroundSink` takes an episode, returns at once, and writes it on its own thread through
the wrapped sink, in order. It knows nothing of Reverb.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from fleetrl.actors.env_loop import EpisodeSink

log = logging.getLogger(__name__)


class BackgroundSink:
    """Queues finished episodes and writes them with ``write`` (a sink's ``write_episode``) on a writer thread.

    ``max_pending`` episodes may wait; a further ``write_episode`` blocks until one is written (the robot then
    waits between episodes, at its home pose, rather than grow memory without bound)."""

    def __init__(self, sink: EpisodeSink, max_pending: int = 20):
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._abandon = threading.Event()
        self.pending = 0
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    def write_episode(self, rows: list[dict[str, Any]], padding_row: dict[str, Any],
                      should_stop: Callable[[], bool] = lambda: False, success: bool = False) -> bool:
        """Queue the episode; True once queued (whether it reached replay is counted in ``written``/``failed``)."""
        with self._lock:
            self.pending += 1
        self._queue.put((rows, padding_row, success))
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            rows, padding, success = item
            try:
                ok = False if self._abandon.is_set() else self._sink.write_episode(rows, padding,
                                                                                   self._abandon.is_set, success)
            except Exception:  # noqa: BLE001 - one failed episode must not end the robot's data stream
                log.exception("writing an episode failed; it is dropped")
                ok = False
            with self._lock:
                self.pending -= 1
                if ok:
                    self.written += 1
                else:
                    self.failed += 1
                self._idle.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued episode is written (or failed); False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: self.pending == 0, timeout=timeout_s)

    def close(self, timeout_s: float | None = 60.0) -> bool:
        """Write what is queued, then stop the thread; False if that did not finish in ``timeout_s`` (then the
        rest is abandoned: the writer's own ``should_stop`` turns true)."""
        done = self.flush(timeout_s)
        if not done:
            self._abandon.set()
        self._queue.put(None)
        self._thread.join(timeout=5.0)
        return done
