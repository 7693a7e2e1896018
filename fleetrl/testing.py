"""Small deterministic stand-ins used by tests and benchmarks (importable by Ray workers)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fleetrl.core import Policy, Weights


class ConstantPolicy:
    """A policy whose action *is* its one weight, ``weights["action"]``: makes weight sync directly observable."""

    def __init__(self, action_shape: tuple[int, ...]):
        self._shape = tuple(action_shape)
        self.action = np.zeros(self._shape, np.float32)

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        return self.action.copy()

    def load_weights(self, weights: Weights) -> None:
        if set(weights) != {"action"}:
            raise ValueError(f"ConstantPolicy expects exactly the weight 'action', got {sorted(weights)}")
        self.action = np.asarray(weights["action"], np.float32).reshape(self._shape)


def constant_policy_factory(action_shape: tuple[int, ...]) -> Callable[[int], Policy]:
    """Factory ``seed -> ConstantPolicy`` (the seed is unused: the policy has no noise)."""
    return lambda seed: ConstantPolicy(tuple(action_shape))


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port that was free a moment ago on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scan_table(address: str, spec: Any, samples: int, table: str = "online") -> dict[int, dict[int, dict[str, Any]]]:
    """``episode_id -> {item key: the transition's scalar fields}`` of a live Reverb table, found by sampling
    ``samples`` transitions through the dataset path (draw about 30x the table size to see every item)."""
    import collections

    from fleetrl.distributed.replay import make_dataset, split_sample

    seen: dict[int, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for n, sample in enumerate(make_dataset(address, 1024, table).as_numpy_iterator()):
        batch = split_sample(spec, sample.data)
        for i, key in enumerate(sample.info.key):
            seen[int(batch.episode_id[i])][int(key)] = {
                "actor_id": int(batch.actor_id[i]), "reward": float(batch.reward[i]),
                "terminated": bool(batch.terminated[i]), "truncated": bool(batch.truncated[i]),
                "is_intervention": bool(batch.is_intervention[i]), "policy_version": int(batch.policy_version[i])}
        if (n + 1) * 1024 >= samples:
            break
    return seen


class TrainingThread:
    """``launcher.train(plan)`` on a background thread, for tests that act on the running fleet (kill a process,
    attach a robot, take an actor over). ``with TrainingThread(plan) as run:`` waits until the fleet has started
    (``run.fleet``); leaving the block stops the run and waits for it; then ``run.summary`` or ``run.error``."""

    def __init__(self, plan: Any, start_timeout_s: float = 180.0):
        import threading

        self.plan, self._timeout_s = plan, start_timeout_s
        self.fleet: Any = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.stop, self._started = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from fleetrl.distributed.launcher import train

        def on_start(fleet: Any) -> None:
            self.fleet = fleet
            self._started.set()

        try:
            self.summary = train(self.plan, stop=self.stop, on_start=on_start)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
            self._started.set()

    def __enter__(self) -> TrainingThread:
        self._thread.start()
        if not self._started.wait(self._timeout_s) or self.error is not None:
            self.stop.set()
            raise AssertionError(f"the run did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self._thread.join(300)


class ListSink:
    """An episode sink that keeps every episode in memory: ``episodes`` holds ``(rows, padding_row)`` pairs,
    ``successes`` whether each succeeded."""

    def __init__(self) -> None:
        self.episodes: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        self.successes: list[bool] = []

    def write_episode(self, rows: list[dict[str, Any]], padding_row: dict[str, Any],
                      should_stop: Callable[[], bool] = lambda: False, success: bool = False) -> bool:
        self.episodes.append((rows, padding_row))
        self.successes.append(success)
        return True


def zmq_request(address: str, message: dict[str, Any], timeout_ms: int = 3000) -> dict[str, Any] | None:
    """One request in fleetrl's wire format on a fresh REQ socket (a robot server or a teleop endpoint, as an
    operator's tool would send it); None if no reply came within ``timeout_ms``."""
    import zmq

    from fleetrl.robot import wire

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(wire.encode(message))
        return wire.decode(sock.recv())
    except zmq.Again:
        return None
    finally:
        sock.close()
