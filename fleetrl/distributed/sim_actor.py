"""A simulated actor as a Ray actor: env loop + Reverb episode writer + weight subscriber."""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from fleetrl.config import TrainConfig
from fleetrl.core import Policy
from fleetrl.types import TransitionSpec


@ray.remote(num_cpus=1, max_concurrency=4)
class SimActor:
    """Steps one env with the newest policy and streams finished episodes into Reverb.

    ``run`` is the long-running loop; ``stats`` and ``stop`` are served concurrently on other threads.
    """

    def __init__(self, actor_id: int, cfg: TrainConfig, spec: TransitionSpec, replay: Any,
                 weight_store: Any, policy_factory: Callable[[int], Policy], generation: int = 0,
                 resumed: bool = False, incarnation: int = 0, robot: Any = None):
        import torch

        from fleetrl.actors.env_loop import EnvLoop
        from fleetrl.distributed.replay_link import ReplayLink, StallProbe
        from fleetrl.distributed.weights import WeightSubscriber
        from fleetrl.envs.gym_adapter import make_env
        from fleetrl.learners.builder import returns_fn

        # One torch thread per actor process: several actors on a small machine otherwise oversubscribe the cores.
        torch.set_num_threads(cfg.actors.torch_threads)
        self.actor_id, self.incarnation, self.kind = actor_id, incarnation, "robot" if robot else "sim"
        if robot is not None:
            from fleetrl.envs.robot_client import make_robot_env

            env, what = make_robot_env(robot, cfg.env), f"robots[{robot.name}] at {robot.server}"
        else:
            env, what = make_env(cfg.env), f"env {cfg.env.id}"
        got = TransitionSpec.from_spaces(env.observation_space, env.action_space)
        if got != spec:
            raise ValueError(f"actor {actor_id}: {what} has transition spec {got}, the run expects {spec}")
        # A restarted actor (incarnation > 0) draws other episodes and numbers them after its predecessor's.
        seed = cfg.actors.seed + 1000 * actor_id + 100_000 * generation + 10_000_000 * incarnation
        self._spec = spec
        self._link = ReplayLink(replay)
        self._probe = StallProbe(self._link, cfg.recovery.probe_after_s)
        self._writer = self._new_writer()
        self._items_by_replay: dict[str, int] = {}
        self._counted_writer: Any = None  # a dropped writer whose items are already in _items_by_replay
        self._weights = WeightSubscriber(weight_store, policy_factory(seed), cfg.actors.weight_poll_timeout_s)
        # A resumed (or --init-from, or restarted) actor already has a trained policy: no random warm-up.
        self._loop = EnvLoop(env, spec, self._weights.current, self._writer, actor_id=actor_id,
                             gamma=cfg.learner.algo().gamma, seed=seed,
                             random_steps=0 if resumed or incarnation else cfg.actors.random_steps,
                             generation=generation,
                             max_steps_per_s=robot.max_steps_per_s if robot else cfg.actors.max_steps_per_s,
                             returns_fn=returns_fn(cfg.learner), first_episode_index=incarnation << 20,
                             swap_between_episodes=bool(robot) and robot.swap_weights == "episode")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._recent: collections.deque = collections.deque(maxlen=1000)
        self._steps_written = 0
        self._episodes_written = 0
        self._episodes_lost = 0
        self._started = time.monotonic()

    def _new_writer(self) -> Any:
        import reverb

        from fleetrl.distributed.replay import EpisodeWriter

        return EpisodeWriter(reverb.Client(self._link.address), self._spec, server_gone=self._probe.waited)

    def _reconnect(self) -> bool:
        """The replay stopped answering: drop the writer (what it held is lost), find the replay again."""
        old = self._writer
        with self._lock:
            self._items_by_replay[self._link.incarnation] = \
                self._items_by_replay.get(self._link.incarnation, 0) + old.items_created
            self._counted_writer = old
        old.close(timeout_ms=0)
        if not self._link.reconnect(self._stop.is_set):
            return False
        self._writer = self._new_writer()
        self._loop.set_sink(self._writer)
        return True

    def pid(self) -> int:
        return os.getpid()

    def run(self, max_episodes: int | None = None, wait_for_version: int | None = None) -> dict[str, Any]:
        """Run episodes until :meth:`stop` (or ``max_episodes``); returns the final stats.

        ``wait_for_version`` holds the first step until that weight version arrived (up to 60 s)."""
        if wait_for_version is not None:
            self._weights.wait_for_version(wait_for_version, 60.0)
        self._started = time.monotonic()
        n = 0
        while not self._stop.is_set() and (max_episodes is None or n < max_episodes):
            ep = self._loop.run_episode(self._stop.is_set)
            if ep is None:
                break
            n += 1
            with self._lock:
                self._recent.append(ep)
                if ep.written:
                    self._steps_written += ep.length
                    self._episodes_written += 1
                else:
                    self._episodes_lost += 1
            if self._writer.broken:  # the episode was abandoned, never half-confirmed into a new server
                if not self._reconnect():
                    break
            else:
                self._probe.reset()
        self._writer.close()
        return self.stats(drain=False)

    def stats(self, drain: bool = True) -> dict[str, Any]:
        """Counters plus the episodes finished since the last drained call."""
        with self._lock:
            episodes = list(self._recent)
            if drain:
                self._recent.clear()
            version, _ = self._weights.current()
            return {
                "actor_id": self.actor_id,
                "env_steps": self._loop.total_steps,
                "steps_written": self._steps_written,
                "episodes_written": self._episodes_written,
                "policy_version": version,
                "policy_epoch": self._weights.epoch,
                "incarnation": self.incarnation,
                "kind": self.kind,
                "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "episodes_lost": self._episodes_lost,
                "replay_incarnation": self._link.incarnation,
                # Items created per replay incarnation (for counting what a replay crash lost).
                "items_by_replay": self._items_by_replay_now(),
                "weight_latency_s": self._weights.last_latency_s,
                "episodes": [{"ret": e.ret, "length": e.length, "success": e.success, "episode_id": e.episode_id,
                              "versions": e.policy_versions, "interventions": e.interventions,
                              "written": e.written, "aborted": e.aborted} for e in episodes],
                "uptime_s": time.monotonic() - self._started,
            }

    def _items_by_replay_now(self) -> dict[str, int]:
        counts = dict(self._items_by_replay)
        if self._writer is not self._counted_writer:
            counts[self._link.incarnation] = counts.get(self._link.incarnation, 0) + self._writer.items_created
        return counts

    def policy_version(self) -> int:
        return self._weights.current()[0]

    def stop(self) -> None:
        self._stop.set()
        self._weights.close()
