"""A client's link to the replay server: the address it writes to or samples from, looked up again after a crash.

Reverb gives no error when its server dies: a writer's flush and a sampler's iterator just wait, exactly as they
do while the rate limiter holds them back. So a client that has waited a while asks the server directly
(``server_info`` with a deadline); if it does not answer, the client asks the replay server's Ray handle for the
address again. Ray restarts the replay actor (restoring its Reverb checkpoint), and queues the call until the new
incarnation is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
import reverb

log = logging.getLogger(__name__)


class ReplayLink:
    """The replay server's current ``address`` and ``incarnation``, from its Ray actor handle."""

    def __init__(self, handle: Any, timeout_s: float = 300.0):
        self._handle = handle
        endpoint = ray.get(handle.endpoint.remote(), timeout=timeout_s)
        self.address: str = endpoint["address"]
        self.incarnation: str = endpoint["incarnation"]

    def answers(self, timeout_s: int = 1) -> bool:
        """Whether the server at :attr:`address` replies within ``timeout_s`` seconds."""
        try:
            reverb.Client(self.address).server_info(timeout=timeout_s)
            return True
        except Exception:  # noqa: BLE001 - deadline exceeded or unavailable: both mean "not answering"
            return False

    def reconnect(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the replay answers again, at a new incarnation if it was restarted; False if ``should_stop``
        became true first. Never gives up on its own: the driver decides when a run has failed."""
        old = self.incarnation
        while not should_stop():
            try:
                endpoint = ray.get(self._handle.endpoint.remote(), timeout=5.0)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
                log.warning("replay server unavailable (%s); asking again", type(exc).__name__)
                time.sleep(0.5)
                continue
            self.address, self.incarnation = endpoint["address"], endpoint["incarnation"]
            if self.incarnation != old or self.answers():
                if self.incarnation != old:
                    log.warning("replay server restarted: incarnation %s at %s", self.incarnation, self.address)
                return True
            time.sleep(0.5)
        return False


class StallProbe:
    """Decides when a client that keeps waiting should check that the replay still answers.

    ``waited()`` is called each time a wait timed out; after ``probe_after_s`` of continuous waiting it probes
    the link (at most once per ``probe_after_s``) and returns True if the server no longer answers."""

    def __init__(self, link: ReplayLink, probe_after_s: float):
        self._link, self._after = link, probe_after_s
        self._since: float | None = None
        self._last_probe = 0.0

    def reset(self) -> None:
        """Progress was made: the next wait starts a new stall."""
        self._since = None

    def waited(self) -> bool:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since < self._after or now - self._last_probe < self._after:
            return False
        self._last_probe = now
        return not self._link.answers()
