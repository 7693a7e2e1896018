"""An actor as a Ray actor: env loop + Reverb episode writer + weight subscriber, for a sim env or a robot.

The same code drives both. A robot actor differs in what the robot needs: its control loop runs at the robot's
rate, finished episodes are written by a separate thread (:class:`BackgroundSink`) so the arm never waits on the
replay, weights (always loaded by the subscriber's thread) swap between episodes by default, a new actor first
brings the arm home, and a robot server that is down is retried with a back-off instead of failing the actor.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from fleetrl.config import TrainConfig
from fleetrl.core import EpisodeAborted, Policy
from fleetrl.types import TransitionSpec

log = logging.getLogger(__name__)
#: A console that asked for a frame this recently is watching; frames are rendered at most this often.
RENDER_WATCH_S, RENDER_PERIOD_S = 2.0, 0.2


@ray.remote(num_cpus=1, max_concurrency=4)
class SimActor:
    """Steps one env with the newest policy and streams finished episodes into Reverb.

    ``run`` is the long-running loop; ``stats`` and ``stop`` are served concurrently on other threads.
    """

    def __init__(self, actor_id: int, cfg: TrainConfig, spec: TransitionSpec, replay: Any,
                 weight_store: Any, policy_factory: Callable[[int], Policy], generation: int = 0,
                 resumed: bool = False, incarnation: int = 0, robot: Any = None, teleop_token: str | None = None):
        import torch

        from fleetrl.actors.env_loop import EnvLoop
        from fleetrl.distributed.replay_link import ReplayLink, StallProbe
        from fleetrl.distributed.weights import WeightSubscriber
        from fleetrl.learners.builder import returns_fn

        # One torch thread per actor process: several actors on a small machine otherwise oversubscribe the cores.
        torch.set_num_threads(cfg.actors.torch_threads)
        self.actor_id, self.incarnation, self.kind = actor_id, incarnation, "robot" if robot else "sim"
        if robot is not None:
            from fleetrl.envs.robot_client import make_robot_env

            env, what = make_robot_env(robot, cfg.env), f"robots[{robot.name}] at {robot.server}"
        else:
            env, what = _make_sim_env(cfg), f"env {cfg.env.id}"
        got = TransitionSpec.from_spaces(env.observation_space, env.action_space)
        if got != spec:
            raise ValueError(f"actor {actor_id}: {what} has transition spec {got}, the run expects {spec}")
        # A restarted actor (incarnation > 0) draws other episodes and numbers them after its predecessor's.
        seed = cfg.actors.seed + 1000 * actor_id + 100_000 * generation + 10_000_000 * incarnation
        self._spec, self.robot = spec, robot
        # The console's view of an actor without a camera: frames rendered on request (see _render_if_watched).
        self._can_render = robot is None and getattr(env, "render_mode", None) == "rgb_array"
        self._frame_wanted_at = self._rendered_at = -1e9
        self._rendered: Any = None
        self._demos = cfg.demos.ratio > 0
        self._horizon, self._success = cfg.learner.horizon(), cfg.learner.success_table()
        self._link = ReplayLink(replay)
        self._probe = StallProbe(self._link, cfg.recovery.probe_after_s)
        self._writer = self._new_writer()
        # Episodes go through _write (counting, reconnecting after a replay restart); a robot's on its own thread.
        self._sink: Any = _ReplaySink(self)
        if robot is not None:
            from fleetrl.actors.background_sink import BackgroundSink

            self._sink = BackgroundSink(self._sink, robot.max_pending_episodes)
        self._items_by_replay: dict[str, int] = {}
        self._counted_writer: Any = None  # a dropped writer whose items are already in _items_by_replay
        self._weights = WeightSubscriber(weight_store, policy_factory(seed), cfg.actors.weight_poll_timeout_s)
        self._takeover, self._teleop = self._open_teleop(cfg, env, teleop_token)
        human = self._takeover
        if cfg.teleop.scripted_share > 0 and robot is None:
            human = _scripted_operator(cfg, env, seed)
        # A resumed (or --init-from, or restarted) actor already has a trained policy: no random warm-up.
        self._loop = EnvLoop(env, spec, self._weights.current, self._sink, actor_id=actor_id,
                             gamma=cfg.learner.algo().gamma, seed=seed,
                             random_steps=0 if resumed or incarnation else cfg.actors.random_steps,
                             generation=generation,
                             max_steps_per_s=robot.max_steps_per_s if robot else cfg.actors.max_steps_per_s,
                             returns_fn=returns_fn(cfg.learner), first_episode_index=incarnation << 20,
                             swap_between_episodes=bool(robot) and robot.swap_weights == "episode",
                             human=human, after_step=self._render_if_watched)
        self._stop = threading.Event()
        self._finish = threading.Event()  # detach: end after the episode in progress
        self._abort = threading.Event()  # detach --now: end the episode in progress now (it is not stored)
        self._lock = threading.Lock()
        self._recent: collections.deque = collections.deque(maxlen=1000)
        self._steps_written = 0
        self._episodes_written = 0
        self._episodes_lost = 0
        self._started = time.monotonic()

    def _new_writer(self) -> Any:
        import reverb

        from fleetrl.distributed.replay import DEMOS_TABLE, SUCCESS_TABLE, EpisodeWriter

        return EpisodeWriter(reverb.Client(self._link.address), self._spec, server_gone=self._probe.waited,
                             demo_table=DEMOS_TABLE if self._demos else None, horizon=self._horizon,
                             success_table=SUCCESS_TABLE if self._success else None)

    def _open_teleop(self, cfg: TrainConfig, env: Any, token: str | None) -> tuple[Any, Any]:
        """A person may take this actor over through its teleop endpoint (HIL-SERL); None, None when off."""
        if not cfg.teleop.enabled or not token:
            return None, None
        from fleetrl.actors.intervention import Takeover
        from fleetrl.actors.teleop_link import TeleopEndpoint

        takeover = Takeover(int(self._spec.action.shape[0]), cfg.teleop.timeout_s, cfg.teleop.on_disconnect)
        label = env.unwrapped.labels.set if self.robot is not None else None
        endpoint = TeleopEndpoint(takeover, token, self.actor_id, cfg.teleop.bind, label=label,
                                  steps=lambda: self._loop.total_steps if hasattr(self, "_loop") else 0,
                                  frame=self._camera_frame,
                                  action_dim=int(self._spec.action.shape[0]))
        return takeover, endpoint

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
        return True

    def _write(self, rows: list[dict[str, Any]], padding: dict[str, Any], should_stop: Callable[[], bool],
               success: bool = False) -> bool:
        """Write one finished episode through the current writer; count it; reconnect if the replay went away."""
        ok = self._writer.write_episode(rows, padding, should_stop, success=success)
        with self._lock:
            if ok:
                self._steps_written += len(rows)
                self._episodes_written += 1
            else:
                self._episodes_lost += 1
        if self._writer.broken:  # the episode was abandoned, never half-confirmed into a new server
            self._reconnect()
        else:
            self._probe.reset()
        return ok

    def pid(self) -> int:
        return os.getpid()

    def run(self, max_episodes: int | None = None, wait_for_version: int | None = None) -> dict[str, Any]:
        """Run episodes until :meth:`stop` (or ``max_episodes``); returns the final stats.

        ``wait_for_version`` holds the first step until that weight version arrived (up to 60 s)."""
        if self.robot is not None:
            self._go_home()
        if wait_for_version is not None:
            deadline = time.monotonic() + 60.0
            while not (self._stop.is_set() or self._weights.wait_for_version(wait_for_version, 0.5)
                       or time.monotonic() > deadline):
                pass
        self._started = time.monotonic()
        n = failures = 0
        while not (self._stop.is_set() or self._finish.is_set()) and (max_episodes is None or n < max_episodes):
            ep = self._loop.run_episode(lambda: self._stop.is_set() or self._abort.is_set())
            if ep is None:
                break
            n += 1
            with self._lock:
                self._recent.append(ep)
                if ep.aborted:
                    self._episodes_lost += 1
            # An episode that could not even start (robot server down or restarting): wait before trying again.
            failures = failures + 1 if ep.aborted and ep.length == 0 else 0
            if failures:
                if failures == 1:
                    log.warning("actor %d: %s; retrying with a back-off", self.actor_id, ep.aborted)
                self._stop.wait(min(0.5 * 2 ** (failures - 1), 5.0))
        if isinstance(self._sink, _ReplaySink):
            self._writer.close()
        else:  # a robot: what the writer thread still holds is written before the actor reports done
            if self._finish.is_set():
                self._go_home()  # detached: the arm is left at its start pose, not held wherever it stopped
            self._sink.close(timeout_s=None if not self._stop.is_set() else 30.0)
            self._writer.close()
        return self.stats(drain=False)

    def _go_home(self) -> None:
        """Before anything else, the arm goes to its start pose: a restarted actor finds it wherever its
        predecessor left it (the server's watchdog holds it there)."""
        try:
            self._loop.env.unwrapped.go_home()
        except EpisodeAborted as exc:  # the server is not up yet: the first episode's reset retries
            log.warning("actor %d: could not bring the robot home yet: %s", self.actor_id, exc)

    def finish(self, now: bool = False) -> None:
        """Detach: stop after the episode in progress (``now``: abort it, nothing of it stored), write every queued
        episode, bring the arm home, then end ``run``."""
        if now:
            self._abort.set()
        self._finish.set()

    def label(self, outcome: str) -> None:
        """A person's success / failure label for the robot's episode in progress."""
        if self.robot is None:
            raise ValueError(f"actor {self.actor_id} is a sim actor: its env gives its own success")
        self._loop.env.unwrapped.labels.set(outcome)

    def stats(self, drain: bool = True) -> dict[str, Any]:
        """Counters plus the episodes finished since the last drained call."""
        with self._lock:
            episodes = list(self._recent)
            if drain:
                self._recent.clear()
            version, _ = self._weights.current()
            pending = getattr(self._sink, "pending", 0)
            return {
                "actor_id": self.actor_id,
                "env_steps": self._loop.total_steps,
                "episode_steps": self._loop.episode_steps,
                "steps_written": self._steps_written,
                "episodes_written": self._episodes_written,
                "policy_version": version,
                "policy_epoch": self._weights.epoch,
                "incarnation": self.incarnation,
                "kind": self.kind,
                "robot": self.robot.name if self.robot is not None else None,
                "policy_version_in_use": self._loop.policy_version_in_use,
                "pending_episodes": pending,
                "finishing": self._finish.is_set(),
                "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "episodes_lost": self._episodes_lost,
                "replay_incarnation": self._link.incarnation,
                # Items created per replay incarnation (for counting what a replay crash lost).
                "items_by_replay": self._items_by_replay_now(),
                "weight_latency_s": self._weights.last_latency_s,
                **self._teleop_stats(),
                "episodes": [{"ret": e.ret, "length": e.length, "success": e.success, "episode_id": e.episode_id,
                              "versions": e.policy_versions, "interventions": e.interventions,
                              "written": e.written, "aborted": e.aborted} for e in episodes],
                "uptime_s": time.monotonic() - self._started,
            }

    def _camera_frame(self) -> Any:
        """The newest observation's camera image; for an actor without a camera, the newest frame its env rendered
        for a watching console (asking for one starts rendering; None until the first one, or if it cannot)."""
        obs = getattr(self, "_loop", None) and self._loop.last_obs
        if obs and obs.get("image") is not None:
            return obs["image"]
        self._frame_wanted_at = time.monotonic()
        return self._rendered

    def _render_if_watched(self) -> None:
        """In the env loop's thread, after a step: render a frame if a console asked for one in the last
        ``RENDER_WATCH_S``, at most every ``RENDER_PERIOD_S`` (nobody watching: no cost)."""
        now = time.monotonic()
        if (not self._can_render or now - self._frame_wanted_at > RENDER_WATCH_S
                or now - self._rendered_at < RENDER_PERIOD_S):
            return
        try:
            frame = self._loop.env.render()
        except Exception:  # noqa: BLE001 - a viewer must never stop the actor; stop trying instead
            log.warning("actor %d: rendering a frame for the console failed; no view", self.actor_id, exc_info=True)
            self._can_render = False
            return
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[-1] >= 3:
            self._rendered, self._rendered_at = np.ascontiguousarray(frame[..., :3], dtype=np.uint8), now
        else:
            self._can_render = False

    def _teleop_stats(self) -> dict[str, Any]:
        if self._teleop is None:
            return {"teleop": None}
        t = self._takeover.stats
        return {"teleop": self._teleop.address(ray.util.get_node_ip_address()),
                "controlled": self._takeover.controlling, "teleop_commands": t.commands, "teleop_drops": t.drops,
                "teleop_latency_s": list(t.latency_s[-200:]), "teleop_labels": list(self._teleop.labels[-20:]),
                "teleop_receive_latency_s": list(t.receive_latency_s[-200:])}

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
        if self._teleop is not None:
            self._teleop.close()


def _scripted_operator(cfg: TrainConfig, env: Any, seed: int) -> Any:
    """The scripted expert as the person (``teleop.scripted_share``): WidowX tasks only."""
    from fleetrl.actors.scripted_operator import ScriptedOperator
    from fleetrl.envs.widowx.env import WidowXEnv
    from fleetrl.envs.widowx.experts import ScriptedExpert

    base = env.unwrapped
    if not isinstance(base, WidowXEnv):
        raise ValueError(f"teleop.scripted_share: the scripted operator needs a WidowX task's expert; env {cfg.env.id} "
                         "has none")
    if not base.privileged:
        raise ValueError("teleop.scripted_share: the scripted expert reads the object's position; set env.kwargs "
                         "privileged: true")
    return ScriptedOperator(ScriptedExpert(base.task, noise=cfg.teleop.scripted_noise), cfg.teleop.scripted_share,
                            cfg.teleop.scripted_steps, seed=seed)


class _ReplaySink:
    """The actor's episode sink: its current writer, counted, reconnected after a replay restart."""

    def __init__(self, actor: SimActor):
        self._actor = actor

    def write_episode(self, rows: list[dict[str, Any]], padding_row: dict[str, Any],
                      should_stop: Callable[[], bool] = lambda: False, success: bool = False) -> bool:
        return self._actor._write(rows, padding_row, should_stop, success)


def _make_sim_env(cfg: TrainConfig) -> Any:
    """A sim actor's env. Without camera observations and with teleop on, it can render frames for the console
    (``render_mode="rgb_array"``; nothing is rendered unless someone watches); an env that cannot is made plain.
    robosuite envs are left plain: asking them for frames opens an offscreen GL context in every actor at once."""
    from fleetrl.envs.gym_adapter import make_env

    if cfg.teleop.enabled and not cfg.env.kwargs.get("image") and "Robosuite" not in cfg.env.id:
        try:
            return make_env(cfg.env, render_mode="rgb_array")
        except Exception:  # noqa: BLE001 - an env without rgb_array rendering is still a fine actor
            log.info("env %s cannot render rgb_array frames; the console shows no view of it", cfg.env.id)
    return make_env(cfg.env)
