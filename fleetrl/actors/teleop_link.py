"""An actor's teleop endpoint: where an operator's commands arrive, wherever the actor runs in the cluster.

Every actor binds one ZeroMQ ROUTER socket on a free port (``teleop.bind``) and serves it from its own thread, so
a command reaches the actor's :class:`~fleetrl.actors.intervention.Takeover` as soon as it arrives, while the env
loop keeps its rate. Messages use the safe wire format (msgpack with numpy arrays, never pickle) and carry the run's
teleop token. Requests (``type``):

- ``control``: ``seq``, ``event_at`` (the device event's wall time), ``takeover`` (bool), ``action`` (7 floats in
  [-1, 1]) — the operator's newest command; ``takeover: false`` releases control;
- ``event``: ``event`` one of ``success``, ``failure`` (a person's label for the episode in progress), ``rerecord``
  (throw the episode in progress away);
- ``status``: nothing more;
- ``frame``: also the newest camera frame (``image``: uint8 ``[S, S, 3]``, absent for an actor without a camera).

Every reply: ``ok``, ``controlling``, ``applied_seq`` and ``applied_at`` (the newest command the env executed, and
when: the operator computes its latency from them), ``actor_id``, ``steps``, ``action_dim``; errors as
``ok: false, error``.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from fleetrl.actors.intervention import Takeover
from fleetrl.robot import wire

log = logging.getLogger(__name__)
EVENTS = ("success", "failure", "rerecord")


class TeleopEndpoint:
    """Serves one actor's :class:`Takeover` on ``tcp://bind:<free port>`` until :meth:`close`."""

    def __init__(self, takeover: Takeover, token: str, actor_id: int, bind: str = "0.0.0.0",
                 label: Callable[[str], None] | None = None, steps: Callable[[], int] = lambda: 0,
                 frame: Callable[[], np.ndarray | None] = lambda: None, action_dim: int = 7):
        if not token:
            raise ValueError("teleop: a token is required (the run writes one to RUN_DIR/teleop_token)")
        self.takeover, self._token, self.actor_id = takeover, token, actor_id
        self._label, self._steps, self._frame, self._action_dim = label, steps, frame, action_dim
        self.labels: list[str] = []
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        self.port = self._sock.bind_to_random_port(f"tcp://{bind}")
        self._bind = bind
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="teleop-endpoint", daemon=True)
        self._thread.start()

    def address(self, node_ip: str) -> str:
        """Where operators connect: the bound interface, or the node's address when bound to all of them."""
        host = node_ip if self._bind in ("0.0.0.0", "*", "") else self._bind
        return f"tcp://{host}:{self.port}"

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            frames = self._sock.recv_multipart()
            reply = self._handle(frames[-1])
            self._sock.send_multipart([*frames[:-1], wire.encode(reply)])
        self._sock.close(linger=0)

    def _handle(self, data: bytes) -> dict[str, Any]:
        try:
            request = wire.decode(data)
            token = request.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token, self._token):
                raise ValueError("token: missing or wrong")
            kind = request.get("type")
            if kind == "control":
                self._control(request)
            elif kind == "event":
                self._event(request.get("event"))
            elif kind not in ("status", "frame"):
                raise ValueError(f"type: unknown request {kind!r} (known: control, event, status, frame)")
            t = self.takeover
            reply = {"ok": True, "controlling": t.controlling, "applied_seq": t.applied_seq,
                     "applied_at": t.applied_at, "actor_id": self.actor_id, "steps": self._steps(),
                     "action_dim": self._action_dim}
            if kind == "frame":
                image = self._frame()
                if image is not None:
                    reply["image"] = image
            return reply
        except (wire.WireError, ValueError, TypeError) as exc:
            self.refused += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the endpoint must outlive any one bad request
            log.exception("teleop request failed")
            self.refused += 1
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _control(self, request: dict[str, Any]) -> None:
        seq, event_at, takeover = request.get("seq"), request.get("event_at"), request.get("takeover")
        if not isinstance(seq, int) or not isinstance(event_at, (int, float)) or not isinstance(takeover, bool):
            raise ValueError("control: expected seq (int), event_at (seconds) and takeover (bool)")
        action = request.get("action")
        if takeover:
            if isinstance(action, list):
                action = np.asarray(action, np.float64) if all(isinstance(v, (int, float)) for v in action) else None
            if not isinstance(action, np.ndarray) or action.dtype.kind not in "fiu":
                raise ValueError("action: expected a numeric array")
        self.takeover.update(seq, takeover, action, float(event_at))

    def _event(self, event: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"event: expected one of {EVENTS}, got {event!r}")
        if event == "rerecord":
            self.takeover.request_rerecord()
            return
        self.labels.append(event)
        if self._label is not None:  # a robot: the person's label sets the reward and ends the episode
            self._label(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
