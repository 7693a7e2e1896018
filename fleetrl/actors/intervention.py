"""A person taking over an actor: what the env loop asks each step, and the state of one takeover.

HIL-SERL (arXiv 2410.21845): while a person acts, their action is executed and stored as the transition's action,
marked ``is_intervention``; those steps also go to the ``demos`` table. This module knows nothing of sockets or
devices: :class:`Takeover` holds the newest command of whoever is in control (the teleop endpoint feeds it) and
answers the env loop's :meth:`Takeover.poll` at the actor's control rate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class HumanInput(Protocol):
    """What the env loop asks a person's input source every step."""

    def begin_episode(self) -> None:
        """A new episode has just been reset."""

    def poll(self, obs: Any) -> tuple[np.ndarray | None, bool]:
        """``(action, by_person)`` for the step about to be taken from ``obs``: the action to execute instead of the
        policy's, or None (the policy acts).
        ``by_person`` is False for an action the system chose for safety (a hold after the operator dropped):
        executed, but not stored as the person's."""

    def applied(self) -> None:
        """The action :meth:`poll` returned was executed (``env.step`` returned): for latency figures."""

    def rerecord(self) -> bool:
        """True once if the person asked to throw the episode in progress away."""


@dataclasses.dataclass
class TakeoverStats:
    commands: int = 0
    applied: int = 0
    drops: int = 0
    """Times the operator went silent for ``timeout_s`` while in control."""
    latency_s: list[float] = dataclasses.field(default_factory=list)
    """Device event to executed action, once per device event (seconds; the newest 1000)."""
    receive_latency_s: list[float] = dataclasses.field(default_factory=list)
    """Device event to the command's arrival at the actor, once per device event (the network part)."""


class Takeover:
    """The newest operator command and whether it is in control, thread-safe.

    ``update`` is called by the teleop endpoint's thread for every command; ``poll`` by the env loop. A command
    older than ``timeout_s`` means the operator has dropped: control goes back to the policy, or with
    ``on_disconnect="hold"`` the actor holds still (zero motion, gripper as last commanded) until the operator is
    back or releases."""

    def __init__(self, action_dim: int, timeout_s: float = 0.5, on_disconnect: str = "policy",
                 clock: Callable[[], float] = time.time):
        if on_disconnect not in ("policy", "hold"):
            raise ValueError(f"teleop.on_disconnect: expected 'policy' or 'hold', got {on_disconnect!r}")
        self._dim, self._timeout_s, self._on_disconnect, self._clock = action_dim, timeout_s, on_disconnect, clock
        self._lock = threading.Lock()
        self._action: np.ndarray | None = None
        self._active = False
        self._holding = False
        self._last_at = 0.0
        self._event_at: float | None = None  # the device event time of the command poll() handed out
        self._pending_event_at: float | None = None
        self._measured_event_at: float | None = None
        self._rerecord = False
        self.applied_seq = -1
        self.applied_at: float | None = None
        self._seq = -1
        self._pending_seq = -1
        self.stats = TakeoverStats()

    def update(self, seq: int, takeover: bool, action: np.ndarray | None, event_at: float) -> None:
        """A command from the operator: ``takeover`` False releases control."""
        # Checked before anything changes: a bad command must not leave the actor "in control" of no action.
        if takeover and (action is None or np.shape(action) != (self._dim,) or not np.all(np.isfinite(action))):
            raise ValueError(f"action: expected {self._dim} finite numbers, got {np.shape(action)}")
        now = self._clock()
        with self._lock:
            self.stats.commands += 1
            self._last_at = now
            self._active = bool(takeover)
            self._holding = False
            if takeover:
                self._action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
                if event_at != self._pending_event_at:  # a new device event (not a heartbeat repeating one)
                    self.stats.receive_latency_s.append(now - event_at)
                    del self.stats.receive_latency_s[:-1000]
                self._pending_seq, self._pending_event_at = seq, event_at

    def request_rerecord(self) -> None:
        with self._lock:
            self._rerecord = True

    @property
    def controlling(self) -> bool:
        with self._lock:
            return self._active

    def begin_episode(self) -> None:
        pass

    def poll(self, obs: Any = None) -> tuple[np.ndarray | None, bool]:
        with self._lock:
            if not self._active and not self._holding:
                return None, False
            if self._clock() - self._last_at > self._timeout_s:  # the operator went silent
                if self._active:
                    self.stats.drops += 1
                    self._active = False
                    self._holding = self._on_disconnect == "hold"
                if not self._holding or self._action is None:
                    return None, False
                hold = np.zeros(self._dim, np.float32)
                if self._dim == 7:  # a Bridge action: the gripper stays as the person left it
                    hold[-1] = self._action[-1]
                return hold, False
            assert self._action is not None
            self._seq, self._event_at = self._pending_seq, self._pending_event_at
            return self._action.copy(), True

    def applied(self) -> None:
        now = self._clock()
        with self._lock:
            self.stats.applied += 1
            self.applied_seq, self.applied_at = self._seq, now
            # Once per device event: a command repeated (the heartbeat of a held input, or reused at the next step)
            # carries the same event time and is not a new event.
            if self._event_at is not None and self._event_at != self._measured_event_at:
                self._measured_event_at = self._event_at
                self.stats.latency_s.append(now - self._event_at)
                del self.stats.latency_s[:-1000]

    def rerecord(self) -> bool:
        with self._lock:
            asked, self._rerecord = self._rerecord, False
            return asked
