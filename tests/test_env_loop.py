"""The env loop without Ray or Reverb: returns-to-go, versions per step, warm-up, stop requests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from fleetrl.actors.env_loop import EnvLoop, episode_id_for
from fleetrl.config import EnvConfig
from fleetrl.core import EpisodeAborted
from fleetrl.envs.gym_adapter import make_env
from fleetrl.testing import ConstantPolicy, ListSink
from fleetrl.types import TransitionSpec, monte_carlo_returns


class CountingEnv(gym.Env):
    """Reward 1 each step; terminates after ``length`` steps (or truncates if ``truncate``)."""

    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, length=4, truncate=False):
        self.length, self.truncate, self.t = length, truncate, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"state": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return ({"state": np.full(1, self.t, np.float32)}, 1.0, end and not self.truncate, end and self.truncate,
                {"success": end and not self.truncate})




def test_plain_discounted_returns():
    np.testing.assert_allclose(monte_carlo_returns(np.array([1.0, 0.0, 2.0]), True, 0.5), [1.5, 1.0, 2.0])


@pytest.mark.parametrize("truncate", [False, True])
def test_episode_rows_carry_returns_and_flags(truncate):
    env = CountingEnv(length=4, truncate=truncate)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    sink = ListSink()
    policy = ConstantPolicy((1,))
    loop = EnvLoop(env, spec, lambda: (3, policy), sink, actor_id=2, gamma=0.9, seed=0)
    stats = loop.run_episode()
    rows, pad = sink.episodes[0]
    assert stats.length == 4 and stats.ret == 4.0 and stats.success == (not truncate)
    np.testing.assert_allclose([r["mc_return"] for r in rows], [1 + .9 + .81 + .729, 1 + .9 + .81, 1.9, 1.0],
                               rtol=1e-6)
    assert [bool(r["terminated"]) for r in rows] == [False, False, False, not truncate]
    assert [bool(r["truncated"]) for r in rows] == [False, False, False, truncate]
    assert all(int(r["policy_version"]) == 3 and int(r["actor_id"]) == 2 for r in rows)
    assert all(int(r["episode_id"]) == episode_id_for(0, 2, 0) for r in rows)
    assert pad["obs"]["state"][0] == 4.0  # the final observation rides on the padding row


def test_new_policy_is_used_mid_episode():
    env = CountingEnv(length=6)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    old, new = ConstantPolicy((1,)), ConstantPolicy((1,))
    new.load_weights({"action": np.array([0.5])})
    calls = {"n": 0}

    def provider():
        calls["n"] += 1
        return (1, old) if calls["n"] <= 3 else (2, new)

    sink = ListSink()
    EnvLoop(env, spec, provider, sink, actor_id=0, gamma=0.99, seed=0).run_episode()
    rows = sink.episodes[0][0]
    assert [int(r["policy_version"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [float(r["action"][0]) for r in rows] == [0, 0, 0, 0.5, 0.5, 0.5]


def test_robot_mode_swaps_policies_only_between_episodes():
    env = CountingEnv(length=6)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    old, new = ConstantPolicy((1,)), ConstantPolicy((1,))
    new.load_weights({"action": np.array([0.5])})
    calls = {"n": 0}

    def provider():  # a new version arrives during the first episode
        calls["n"] += 1
        return (1, old) if calls["n"] <= 1 else (2, new)

    sink = ListSink()
    loop = EnvLoop(env, spec, provider, sink, actor_id=0, gamma=0.99, seed=0, swap_between_episodes=True)
    loop.run_episode()
    loop.run_episode()
    assert [int(r["policy_version"]) for r in sink.episodes[0][0]] == [1] * 6
    assert [int(r["policy_version"]) for r in sink.episodes[1][0]] == [2] * 6


class AbortingEnv(CountingEnv):
    """Fails at step ``at`` of every episode, as a robot env does when its server stops answering."""

    def __init__(self, length, at):
        super().__init__(length=length)
        self.at = at

    def step(self, action):
        if self.t + 1 == self.at:
            raise EpisodeAborted("robot server: no reply")
        return super().step(action)


def test_aborted_episode_stores_nothing_and_the_next_one_starts_fresh():
    env = AbortingEnv(length=6, at=4)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    sink = ListSink()
    loop = EnvLoop(env, spec, lambda: (3, ConstantPolicy((1,))), sink, actor_id=0, gamma=0.99, seed=0)
    stats = loop.run_episode()
    assert stats.written is False and stats.aborted == "robot server: no reply" and stats.length == 3
    assert sink.episodes == []
    env.at = 99  # the link is back
    assert loop.run_episode().written and len(sink.episodes[0][0]) == 6
    assert sink.episodes[0][0][0]["episode_id"] != stats.episode_id


def test_random_warmup_then_policy_and_stop():
    env = CountingEnv(length=5)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    sink = ListSink()
    loop = EnvLoop(env, spec, lambda: (7, ConstantPolicy((1,))), sink, actor_id=0, gamma=0.99, seed=0,
                   random_steps=3)
    loop.run_episode()
    assert [int(r["policy_version"]) for r in sink.episodes[0][0]] == [-1, -1, -1, 7, 7]
    assert loop.run_episode(should_stop=lambda: True) is None  # a stop request writes nothing
    assert len(sink.episodes) == 1


def test_episode_ids_are_unique_across_generations_and_actors():
    ids = {episode_id_for(g, a, i) for g in range(3) for a in range(4) for i in range(50)}
    assert len(ids) == 3 * 4 * 50


def test_gym_adapter_rescales_actions_and_wraps_obs():
    env = make_env(EnvConfig(id="Pendulum-v1", success="info", max_episode_steps=5))
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state"} and obs["state"].dtype == np.float32
    # Pendulum's torque bound is 2: action 1.0 executes +2, whose cost term shows up in the reward.
    inner = env.unwrapped
    env.step(np.array([1.0], np.float32))
    assert inner.last_u == pytest.approx(2.0)
    with pytest.raises(ValueError, match="env.id"):
        make_env(EnvConfig(id="NoSuchEnv-v0"))


@pytest.mark.parametrize("truncate", [False, True])
def test_actor_mc_returns_use_the_learner_reward_transform(truncate):
    """What a Cal-QL actor stores: the learner's units (reward * 2 - 3), the truncation tail valued at r_neg/(1-g)."""
    from fleetrl.config import LearnerConfig, RewardConfig, SACConfig
    from fleetrl.learners.builder import returns_fn

    cfg = LearnerConfig(sac=SACConfig(gamma=0.5), reward=RewardConfig(scale=2.0, bias=-3.0, sparse=True, negative=1.0))
    env = CountingEnv(length=2, truncate=truncate)
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    sink = ListSink()
    EnvLoop(env, spec, lambda: (0, ConstantPolicy((1,))), sink, actor_id=0, gamma=0.5, seed=0,
            returns_fn=returns_fn(cfg)).run_episode()
    rows, _ = sink.episodes[0]
    # Every reward 1 -> transformed -1 == r_neg (negative 1.0 * 2 - 3): a failure forever, G = -1 / (1 - 0.5).
    np.testing.assert_allclose([r["mc_return"] for r in rows], [-2.0, -2.0])
