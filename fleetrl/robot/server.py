"""``fleetrl robot-server``: one arm behind a ZeroMQ socket, speaking the Bridge request types in fleetrl's safe
format (:mod:`fleetrl.robot.wire`), with the safety checks on the server side where a failing client cannot skip
them.

Requests (maps): ``{"type": "hash"}``, ``{"type": "obs"}``, ``{"type": "act", "key": K, "payload": {...}}`` with K
one of ``init``, ``step_action``, ``move``, ``gripper``, ``reset``, ``estop``, ``clear_estop``; each may carry
``token``. Replies: ``{"ok": True, ...}`` or ``{"ok": False, "error": "..."}`` naming the field at fault; act
replies also carry the Bridge ``status`` (1 success, 2 execution failure, 3 not initialised).

Safety:
- every step is clipped to ``max_step_m`` / ``max_step_rad`` (the velocity limit at the 0.2 s control period),
  and a ``move`` is stretched to at least the time those limits allow;
- targets are clipped to the workspace box;
- a watchdog: once commanded, if no command arrives for ``watchdog_s`` the arm holds its pose and further steps are
  refused until a ``reset``: a client that lost its link must start a new episode, never resume one blindly;
- ``estop`` holds the arm and refuses motion until ``clear_estop``;
- it binds to localhost unless told otherwise, and then requires a shared token from every request.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import zmq

from fleetrl.robot import wire
from fleetrl.robot.backends import make_backend

log = logging.getLogger(__name__)
#: What a Bridge client compares in the handshake (the robot-server protocol's reference string).
BRIDGE_HASH = json.dumps({"port_number": 5556, "action_keys": ["init", "move", "gripper", "reset", "step_action",
                                                               "reboot_motor"],
                          "observation_keys": ["image", "state", "full_image"], "broadcast_port": 5557,
                          "version": "0.0.1"}, separators=(",", ":"))
CONTROL_PERIOD_S = 0.2


@dataclasses.dataclass(frozen=True)
class Safety:
    """Server-side limits (Bridge's real-robot values by default)."""

    max_step_m: float = 0.05
    max_step_rad: float = 0.25
    workspace_low: tuple[float, float, float] = (0.1, -0.15, -0.1)
    workspace_high: tuple[float, float, float] = (0.45, 0.25, 0.18)
    watchdog_s: float = 1.0
    max_speed_m_s: float = 0.25
    max_speed_rad_s: float = 1.25
    """Velocity limits: a step may move at most speed x the time since the previous step (on the arm's own clock),
    so a client stepping faster than 5 Hz gets proportionally smaller steps, never a faster arm."""


class RequestError(ValueError):
    """A request the server refuses; the text names the field."""


def _array(payload: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in payload:
        raise RequestError(f"payload.{key}: missing")
    value = payload[key]
    if isinstance(value, list):
        value = np.asarray(value, dtype=np.float64) if all(isinstance(v, (int, float)) for v in value) else None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise RequestError(f"payload.{key}: expected a numeric array of shape {shape}")
    if value.shape != shape or not np.all(np.isfinite(value)):
        raise RequestError(f"payload.{key}: expected {shape} finite numbers, got shape {value.shape}")
    return value.astype(np.float64)


def _check_keys(payload: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RequestError(f"{where}: expected a map, got {type(payload).__name__}")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise RequestError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")
    return payload


class RobotServer:
    """Serves one backend on ``tcp://bind:port`` (a ROUTER socket: many clients, one request at a time)."""

    def __init__(self, backend: Any, bind: str = "127.0.0.1", port: int = 5556, token: str | None = None,
                 safety: Safety = Safety()):
        if bind not in ("127.0.0.1", "localhost") and not token:
            raise ValueError("robot-server: binding to a non-local address needs a shared --token")
        self.backend, self.safety, self._token = backend, safety, token
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        if port == 0:
            self.port = self._sock.bind_to_random_port(f"tcp://{bind}")
        else:
            self._sock.bind(f"tcp://{bind}:{port}")
            self.port = port
        self.initialised = False
        self._last_step_at: float | None = None  # the backend's clock at the previous step (velocity limit)
        self.state = "idle"  # idle | active | holding | estop
        self._last_command = time.monotonic()
        self._stop = threading.Event()
        self.served = 0
        self.refused = 0

    # ---- the loop --------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`; between them, run the watchdog and keep the held arm servoing."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        next_idle = time.monotonic() + CONTROL_PERIOD_S
        while not self._stop.is_set():
            if poller.poll(timeout=int(CONTROL_PERIOD_S * 250)):
                frames = self._sock.recv_multipart()
                reply = self._handle(frames[-1])
                self._sock.send_multipart([*frames[:-1], wire.encode(reply)])
            now = time.monotonic()
            if self.state == "active" and now - self._last_command > self.safety.watchdog_s:
                log.warning("watchdog: no command for %.1f s; holding the arm", now - self._last_command)
                self.backend.hold()
                self.state = "holding"
            if self.initialised and self.state in ("holding", "estop", "idle") and now >= next_idle:
                self.backend.idle()  # the control loop keeps running: the arm servos on the pose it holds
                next_idle = now + CONTROL_PERIOD_S
        self._sock.close()

    def stop(self) -> None:
        self._stop.set()

    # ---- one request -----------------------------------------------------------------------------------------
    def _handle(self, data: bytes) -> dict[str, Any]:
        try:
            request = wire.decode(data)
            reply = self._dispatch(request)
            self.served += 1
            return {"ok": True, **reply}
        except (wire.WireError, RequestError) as exc:
            self.refused += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a backend failure (e.g. effort limit) is an execution failure
            log.exception("robot command failed")
            self.refused += 1
            return {"ok": False, "status": 2, "error": f"execution failure: {type(exc).__name__}: {exc}"}

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        _check_keys(request, {"type", "key", "payload", "token", "keys"}, "request")
        if self._token is not None:
            given = request.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(given, self._token):
                raise RequestError("token: missing or wrong")
        kind = request.get("type")
        if kind == "hash":
            return {"payload": BRIDGE_HASH}
        if kind == "obs":
            keys = request.get("keys")
            if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
                raise RequestError("keys: expected a list of observation names, e.g. ['state', 'joints']")
            if not self.initialised:
                raise RequestError("obs: not initialised (send act init first)")
            # A client without a camera asks for state and joints only: no frame is rendered or sent.
            obs = self.backend.observe(image=keys is None or "image" in keys)
            return {**obs, "robot_state": self.state}
        if kind != "act":
            raise RequestError(f"type: unknown request type {kind!r} (known: hash, obs, act)")
        key = request.get("key")
        payload = request.get("payload", {})
        handler = getattr(self, f"_act_{key}", None) if isinstance(key, str) else None
        if handler is None:
            raise RequestError(f"key: unknown action {key!r} (known: init, step_action, move, gripper, reset, "
                               "estop, clear_estop)")
        if key not in ("init", "estop", "clear_estop") and not self.initialised:
            return {"status": 3, "error": "not initialised"}
        if self.state == "estop" and key not in ("estop", "clear_estop"):
            raise RequestError(f"{key}: refused, the e-stop is engaged (send clear_estop)")
        return {"status": 1, **(handler(payload) or {})}

    # ---- actions ---------------------------------------------------------------------------------------------
    def _act_init(self, payload: Any) -> None:
        p = _check_keys(payload, {"env_params", "image_size"}, "payload")
        size = p.get("image_size", 128)
        if not isinstance(size, int) or not 16 <= size <= 512:
            raise RequestError(f"payload.image_size: expected an int in [16, 512], got {size!r}")
        self.backend.init(size)
        self.initialised, self.state, self._last_step_at = True, "idle", None

    def _act_step_action(self, payload: Any) -> None:
        p = _check_keys(payload, {"action", "blocking"}, "payload")
        action = _array(p, "action", (7,))
        if self.state == "holding":
            raise RequestError("step_action: refused, the watchdog is holding the arm (send reset to start a new "
                               "episode)")
        s = self.safety
        now = self.backend.clock()
        dt = CONTROL_PERIOD_S if self._last_step_at is None else max(now - self._last_step_at, 0.0)
        self._last_step_at = now
        lin, ang = min(s.max_step_m, s.max_speed_m_s * dt), min(s.max_step_rad, s.max_speed_rad_s * dt)
        delta = np.concatenate([np.clip(action[:3], -lin, lin), np.clip(action[3:6], -ang, ang),
                                [np.clip(action[6], 0.0, 1.0)]])
        # Keep the target inside the box: shorten the step instead of letting the arm press on the boundary.
        pos = self.backend.tcp_state()[:3]
        delta[:3] = np.clip(pos + delta[:3], s.workspace_low, s.workspace_high) - pos
        self.backend.step(delta)
        self._commanded()

    def _act_move(self, payload: Any) -> None:
        p = _check_keys(payload, {"pose", "duration", "blocking"}, "payload")
        pose = _array(p, "pose", (6,))
        s = self.safety
        pose[:3] = np.clip(pose[:3], s.workspace_low, s.workspace_high)
        here = self.backend.tcp_state()[:6]
        # No faster than the step and velocity limits allow: at least this many control periods.
        per_period_m = min(s.max_step_m, s.max_speed_m_s * CONTROL_PERIOD_S)
        per_period_rad = min(s.max_step_rad, s.max_speed_rad_s * CONTROL_PERIOD_S)
        periods = max(np.max(np.abs(pose[:3] - here[:3])) / per_period_m,
                      np.max(np.abs(pose[3:] - here[3:])) / per_period_rad, 1.0)
        duration = p.get("duration", CONTROL_PERIOD_S)
        if not isinstance(duration, (int, float)) or duration <= 0:
            raise RequestError(f"payload.duration: expected a positive number, got {duration!r}")
        self.backend.move(pose, max(float(duration), float(np.ceil(periods)) * CONTROL_PERIOD_S))
        self._commanded()

    def _act_gripper(self, payload: Any) -> None:
        p = _check_keys(payload, {"open"}, "payload")
        opening = p.get("open")
        if not isinstance(opening, (int, float)):
            raise RequestError(f"payload.open: expected a number, got {opening!r}")
        self.backend.step(np.array([0, 0, 0, 0, 0, 0, 1.0 if opening > 0.5 else 0.0]))
        self._commanded()

    def _act_reset(self, payload: Any) -> None:
        _check_keys(payload, set(), "payload")
        self.backend.reset()
        self._last_step_at = None
        self.state = "idle"  # a reset ends a watchdog hold: the client starts a new episode
        self._last_command = time.monotonic()

    def _act_estop(self, payload: Any) -> None:
        _check_keys(payload, set(), "payload")
        if self.initialised:
            self.backend.hold()
        self.state = "estop"
        log.warning("e-stop engaged")

    def _act_clear_estop(self, payload: Any) -> None:
        _check_keys(payload, set(), "payload")
        if self.state == "estop":
            self.state = "holding"  # still refuses steps until a reset

    def _commanded(self) -> None:
        self.state, self._last_command = "active", time.monotonic()


def serve(backend_name: str = "sim", bind: str = "127.0.0.1", port: int = 5556, token: str | None = None,
          safety: Safety = Safety(), **backend_kwargs: Any) -> None:
    """Build the backend and serve until interrupted (the ``fleetrl robot-server`` command)."""
    server = RobotServer(make_backend(backend_name, **backend_kwargs), bind, port, token, safety)
    log.warning("robot server (%s backend) on tcp://%s:%d", backend_name, bind, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.backend.hold()
    finally:
        server.backend.close()
