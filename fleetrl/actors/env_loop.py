"""The env loop every actor runs: act with the newest policy, collect an episode, hand it to a sink.

It knows nothing of Ray or Reverb. The policy is read afresh each step from a provider, so new weights are used
mid-episode; every step row records the version that chose its action.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from fleetrl.actors.intervention import HumanInput
from fleetrl.core import EpisodeAborted, Policy, reset_policy
from fleetrl.types import TransitionSpec, monte_carlo_returns


class EpisodeSink(Protocol):
    """Where finished episodes go (the Reverb writer in a real run)."""

    def write_episode(self, rows: list[dict[str, Any]], padding_row: dict[str, Any],
                      should_stop: Callable[[], bool] = ..., success: bool = ...) -> bool: ...


PolicyProvider = Callable[[], "tuple[int, Policy | None]"]
"""Returns the newest ``(version, policy)``; ``(-1, None)`` before any weights arrived (``VariableSource.current``)."""


@dataclasses.dataclass
class EpisodeStats:
    episode_id: int
    length: int
    ret: float
    success: bool
    terminated: bool
    written: bool
    policy_versions: tuple[int, int]
    """Lowest and highest policy version used in the episode."""
    seconds: float
    interventions: int = 0
    """Steps whose action a person chose (``is_intervention``)."""
    aborted: str | None = None
    """Why the env aborted the episode (then nothing of it was written)."""


def episode_id_for(generation: int, actor_id: int, index: int) -> int:
    """Unique episode id across actors and resumed runs: generation, actor and per-actor index packed in 63 bits."""
    if not (0 <= index < 1 << 28 and 0 <= actor_id < 1 << 16 and 0 <= generation < 1 << 19):
        raise ValueError(f"episode id out of range: generation {generation}, actor {actor_id}, index {index}")
    return (generation << 44) | (actor_id << 28) | index


class EnvLoop:
    """Runs episodes of ``env`` and writes each finished one to ``sink``."""

    def __init__(self, env: Any, spec: TransitionSpec, policy: PolicyProvider, sink: EpisodeSink, *, actor_id: int,
                 gamma: float, seed: int, random_steps: int = 0, generation: int = 0,
                 max_steps_per_s: float | None = None,
                 returns_fn: Callable[[np.ndarray, bool], np.ndarray] | None = None, first_episode_index: int = 0,
                 swap_between_episodes: bool = False, human: HumanInput | None = None,
                 after_step: Callable[[], None] | None = None):
        self.env, self.spec, self._policy, self._sink = env, spec, policy, sink
        self.actor_id, self.gamma, self.generation = actor_id, gamma, generation
        # mc_return of every transition, computed once the episode is over (Cal-QL's floor; the learner's reward
        # units and sparse-failure rule come with `returns_fn`, built by learners.builder.returns_fn).
        self._returns = returns_fn or (lambda rewards, terminated: monte_carlo_returns(rewards, terminated, gamma))
        self._seed, self._random_steps = seed, random_steps
        self._min_step_s = 1.0 / max_steps_per_s if max_steps_per_s else 0.0
        self._next_step_at = 0.0
        self._rng = np.random.default_rng(seed)
        self.env.action_space.seed(seed)
        self.total_steps = 0
        self.last_obs: Mapping[str, np.ndarray] | None = None
        """The newest observation (a teleop console shows its camera frame)."""
        self.episodes = 0
        self.episode_steps = 0
        """Steps taken so far in the episode in progress."""
        # Episode ids continue past a crashed predecessor's (the supervisor gives a restarted actor a new range).
        self._first_index = first_episode_index
        # Robots: one policy per episode by default (a mid-episode change of behaviour on hardware is a surprise).
        self._swap_between_episodes = swap_between_episodes
        self._episode_policy: tuple[int, Policy | None] = (-1, None)
        # The policy object that chose the last action: the only one that can hold a chunk in hand (a new version
        # arrives as a fresh copy, without one).
        self._acting_policy: Policy | None = None
        # A person who may take over (HIL-SERL): their action is executed and stored, marked is_intervention.
        self._human = human
        # Called in this thread after every step (the actor renders a frame for a watching console here: GL
        # contexts belong to the thread that made them).
        self._after_step = after_step

    @property
    def policy_version_in_use(self) -> int:
        """The version acting now: the episode's (robots) or the newest (sim actors); -1 before any weights."""
        return (self._episode_policy if self._swap_between_episodes else self._policy())[0]

    def _choose(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
        version, policy = self._episode_policy if self._swap_between_episodes else self._policy()
        if policy is None or self.total_steps < self._random_steps:
            return self.env.action_space.sample().astype(np.float32), -1
        self._acting_policy = policy
        return policy.act(obs), version

    def _pace(self) -> None:
        now = time.perf_counter()
        if now < self._next_step_at:
            time.sleep(self._next_step_at - now)
        self._next_step_at = max(now, self._next_step_at) + self._min_step_s

    def run_episode(self, should_stop: Callable[[], bool] = lambda: False) -> EpisodeStats | None:
        """One episode; returns its stats, or None if a stop request cut it short (nothing is written then)."""
        t0 = time.perf_counter()
        episode_id = episode_id_for(self.generation, self.actor_id, self._first_index + self.episodes)
        if self._swap_between_episodes:
            self._episode_policy = self._policy()
        rows: list[dict[str, Any]] = []
        rewards: list[float] = []
        versions: list[int] = []
        terminated = truncated = False
        self.episode_steps = 0
        try:
            # Seed only the first reset: later resets continue the env's RNG, so starts differ but runs repeat.
            obs, info = self.env.reset(seed=self._seed if self.episodes == 0 else None)
            if self._human is not None:
                self._human.begin_episode()
            reset_policy(self._acting_policy)  # a chunk policy starts the episode with a fresh chunk
            while not (terminated or truncated):
                if should_stop():
                    return None
                if self._min_step_s:
                    self._pace()
                human, by_person = self._human.poll(obs) if self._human is not None else (None, False)
                if human is not None:  # the person's (or a safety hold's) action replaces the policy's
                    action, version = human, self.policy_version_in_use
                    reset_policy(self._acting_policy)  # once the person lets go, the policy plans from here
                else:
                    action, version = self._choose(obs)
                next_obs, reward, terminated, truncated, info = self.env.step(action)
                if by_person:
                    self._human.applied()  # type: ignore[union-attr]
                rows.append(self.spec.make_step(
                    obs, action, reward=reward, terminated=terminated, truncated=truncated, mc_return=0.0,
                    is_intervention=by_person, policy_version=version, actor_id=self.actor_id,
                    episode_id=episode_id))
                rewards.append(reward)
                versions.append(version)
                obs = self.last_obs = next_obs
                self.total_steps += 1
                self.episode_steps += 1
                if self._after_step is not None:
                    self._after_step()
                if self._human is not None and self._human.rerecord():
                    raise EpisodeAborted("the operator asked to re-record the episode")
        except EpisodeAborted as exc:  # nothing of it is stored: its returns and last transitions are unknown
            self.episodes += 1
            return EpisodeStats(episode_id=episode_id, length=len(rows), ret=float(np.sum(rewards)), success=False,
                                terminated=False, written=False, policy_versions=(min(versions, default=-1),
                                                                                  max(versions, default=-1)),
                                seconds=time.perf_counter() - t0, aborted=str(exc))
        returns = self._returns(np.asarray(rewards), terminated)
        for row, g in zip(rows, returns, strict=True):
            row["mc_return"] = np.float32(g)
        padding = self.spec.padding_step(obs, self.actor_id, episode_id)
        success = bool(info.get("success", False))
        written = self._sink.write_episode(rows, padding, should_stop, success=success)
        self.episodes += 1
        return EpisodeStats(episode_id=episode_id, length=len(rows), ret=float(np.sum(rewards)),
                            success=success, terminated=terminated, written=written,
                            policy_versions=(min(versions), max(versions)), seconds=time.perf_counter() - t0,
                            interventions=int(sum(bool(r["is_intervention"]) for r in rows)))
