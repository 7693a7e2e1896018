"""The operator's side of a takeover: read a device, send its newest state to one actor's teleop endpoint.

The operator's tool runs anywhere it can reach the actor's node (``fleetrl teleop``). It sends a ``control`` message
every period while the person holds control (the actor treats silence longer than ``teleop.timeout_s`` as a
dropped operator), one ``takeover: false`` when they let go, and device events (success / failure / re-record) as
they happen. Latency from a device event to the actor executing it comes back in every reply (``applied_seq``,
``applied_at``); both clocks are wall clocks, exact on one machine, off by the clock offset across machines.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from fleetrl.robot import wire


@dataclasses.dataclass
class RecordedState:
    """One input state of a recorded session (what :class:`RecordedDevice` replays)."""

    t: float
    action: list[float]
    takeover: bool
    events: list[str] = dataclasses.field(default_factory=list)


class RecordedDevice:
    """Replays recorded input states at their recorded times (JSON lines of :class:`RecordedState`), from the
    first ``read``; after the last one the person has let go. For tests, benchmarks and the scripted operator."""

    name = "recorded"

    def __init__(self, states: list[RecordedState], clock: Callable[[], float] = time.monotonic):
        self._states, self._clock = states, clock
        self._start: float | None = None
        self._i = -1
        self._event_at = 0.0

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> RecordedDevice:
        states = []
        for n, line in enumerate(pathlib.Path(path).read_text().splitlines()):
            try:
                states.append(RecordedState(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path} line {n + 1}: not a recorded input state ({exc})") from None
        return cls(states)

    def read(self) -> Any:
        from fleetrl.teleop.devices import DeviceState

        now = self._clock()
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        events: list[str] = []
        while self._i + 1 < len(self._states) and self._states[self._i + 1].t <= elapsed:
            self._i += 1
            events += self._states[self._i].events
            # Stamped once: every later read of the same state repeats this event time (it is one device event).
            self._event_at = time.time() - (elapsed - self._states[self._i].t)
        if self._i < 0:  # before the first recorded state: hands off
            return DeviceState(np.zeros(7, np.float32), False, events, time.time())
        s = self._states[self._i]  # the newest state stays until the next (end a recording with a release)
        return DeviceState(np.asarray(s.action, np.float32), s.takeover, events, self._event_at)

    def close(self) -> None:
        pass


class TeleopClient:
    """A REQ socket to one actor's teleop endpoint; a missed reply recreates it (the next command goes out)."""

    def __init__(self, address: str, token: str, timeout_ms: int = 500):
        self.address, self._token, self._timeout_ms = address, token, timeout_ms
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._connect()
        # Sequence numbers grow across sessions (an actor's applied_seq outlives an operator who left), so start
        # from the clock rather than from 0.
        self.seq = time.time_ns() // 1000
        self._event_at: dict[int, float] = {}
        self._seen_applied = -1
        self._measured_event_at: float | None = None
        self.latency_s: list[float] = []
        self.missed = 0

    def _connect(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = self._ctx.socket(zmq.REQ)
        for opt, value in ((zmq.LINGER, 0), (zmq.RCVTIMEO, self._timeout_ms), (zmq.SNDTIMEO, self._timeout_ms)):
            self._sock.setsockopt(opt, value)
        self._sock.connect(self.address)

    def request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        assert self._sock is not None
        try:
            self._sock.send(wire.encode({**message, "token": self._token}))
            reply = wire.decode(self._sock.recv())
        except zmq.Again:
            self.missed += 1
            self._connect()
            return None
        if reply.get("ok") is False:
            raise RuntimeError(f"teleop endpoint {self.address}: {reply.get('error')}")
        self._note_applied(reply)
        return reply

    def control(self, takeover: bool, action: np.ndarray | None, event_at: float) -> dict[str, Any] | None:
        self.seq += 1
        if takeover:
            self._event_at[self.seq] = event_at
        return self.request({"type": "control", "seq": self.seq, "event_at": event_at, "takeover": takeover,
                             **({"action": np.asarray(action, np.float32)} if takeover else {})})

    def event(self, name: str) -> dict[str, Any] | None:
        return self.request({"type": "event", "event": name})

    def _note_applied(self, reply: dict[str, Any]) -> None:
        """Device event to executed action, for each command the actor executed since the last reply."""
        applied, at = reply.get("applied_seq", -1), reply.get("applied_at")
        if applied > self._seen_applied and at is not None and applied in self._event_at:
            event_at = self._event_at[applied]
            if event_at != self._measured_event_at:  # once per device event, not per heartbeat repeating it
                self._measured_event_at = event_at
                self.latency_s.append(at - event_at)
        self._seen_applied = max(self._seen_applied, applied)
        for seq in [s for s in self._event_at if s <= self._seen_applied]:
            del self._event_at[seq]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


def run_teleop(client: TeleopClient, device: Any, rate_hz: float = 50.0, stop: threading.Event | None = None,
               duration_s: float | None = None, on_tick: Callable[[Any, dict | None], None] | None = None
               ) -> dict[str, Any]:
    """Send ``device``'s state to the actor at ``rate_hz`` until ``stop`` (or ``duration_s``); returns counts and
    latency figures. While the person holds control a command goes out every period (a heartbeat); letting go
    sends one release."""
    stop = stop or threading.Event()
    t_end = None if duration_s is None else time.monotonic() + duration_s
    counts: dict[str, Any] = {"controlling": False, "sent": 0}
    try:
        _loop(client, device, 1.0 / rate_hz, stop, t_end, on_tick, counts)
    except KeyboardInterrupt:  # Ctrl-C: let go cleanly (the release below) rather than by going silent
        pass
    finally:
        if counts["controlling"]:
            client.control(False, None, time.time())
        device.close()
    return {"commands": counts["sent"], "missed_replies": client.missed, **latency_summary(client.latency_s)}


def _loop(client: TeleopClient, device: Any, period: float, stop: threading.Event, t_end: float | None,
          on_tick: Callable[[Any, dict | None], None] | None, counts: dict[str, Any]) -> None:
    next_at = time.monotonic()
    while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
        state = device.read()
        reply = None
        for name in state.events:
            reply = client.event(name)
        if state.takeover:
            reply = client.control(True, state.action, state.event_at)
            counts["controlling"], counts["sent"] = True, counts["sent"] + 1
        elif counts["controlling"]:
            reply = client.control(False, None, state.event_at)
            counts["controlling"] = False
        if on_tick is not None:
            on_tick(state, reply)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


def latency_summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"latency_n": 0, "latency_p50_ms": None, "latency_p99_ms": None}
    ms = np.asarray(values) * 1e3
    return {"latency_n": len(values), "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p99_ms": float(np.percentile(ms, 99))}
