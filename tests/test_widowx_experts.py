"""Scripted experts: above 90 % success at noise 0, and a mixed-quality success rate at each task's mixed noise."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from fleetrl.envs.registry import WIDOWX_IDS
from fleetrl.envs.widowx.experts import MIXED_NOISE, ScriptedExpert

SEEDS = range(20)


def expert_success_rate(env_id: str, expert, seeds) -> tuple[float, list[int]]:
    """Success rate and episode lengths of ``expert`` (``reset(seed)``, ``act(obs)``) on ``env_id``, one episode per
    seed."""
    env = gym.make(env_id)
    wins, lengths = 0, []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.reset(seed)
            steps, done = 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(expert.act(obs))
                steps, done = steps + 1, terminated or truncated
            wins += bool(info["success"])
            lengths.append(steps)
    finally:
        env.close()
    return wins / len(seeds), lengths


def _success_rate(task: str, noise: float, seeds=SEEDS) -> tuple[float, list[int]]:
    return expert_success_rate(WIDOWX_IDS[task], ScriptedExpert(task, noise=noise), seeds)


@pytest.mark.parametrize("task", sorted(WIDOWX_IDS))
def test_expert_succeeds_at_noise_zero(task):
    rate, lengths = _success_rate(task, 0.0)
    assert rate >= 0.9, f"{task}: expert success {rate:.0%} at noise 0"
    # Successful episodes end by termination, well inside the time limit.
    assert min(lengths) < gym.spec(WIDOWX_IDS[task]).max_episode_steps


# reach and lift (the evidence tasks) in the default run; the other three take ~40 s together, so they are `slow`.
@pytest.mark.parametrize("task", [t if t in ("reach", "lift") else pytest.param(t, marks=pytest.mark.slow)
                                  for t in sorted(WIDOWX_IDS)])
def test_mixed_noise_gives_a_mixed_quality_dataset(task):
    # 40 episodes: success falls steeply with noise near these levels, and 20 left the estimate +-11 %.
    rate, _ = _success_rate(task, MIXED_NOISE[task], range(40))
    assert 0.3 <= rate <= 0.6, f"{task}: success {rate:.0%} at noise {MIXED_NOISE[task]}"


def test_noise_zero_is_deterministic_and_noise_draws_from_the_expert_seed():
    obs = {"state": np.zeros(7, np.float32), "object": np.array([0.3, 0.0, -0.03, 1, 0, 0, 0], np.float32)}
    clean = ScriptedExpert("lift", 0.0, seed=1)
    assert np.array_equal(clean.act(obs), ScriptedExpert("lift", 0.0, seed=2).act(obs))
    a, b, c = (ScriptedExpert("lift", 0.5, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.act(obs), b.act(obs))
    assert not np.array_equal(a.act(obs), c.act(obs))
    assert np.all(np.abs(a.act(obs)) <= 1.0)


def test_expert_needs_the_privileged_object_state():
    with pytest.raises(ValueError, match="privileged"):
        ScriptedExpert("lift").act({"state": np.zeros(7, np.float32)})
