"""Cal-QL Monte-Carlo returns: a success, a failure-forever, a truncated episode, and the reward transform."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.types import monte_carlo_returns

GAMMA = 0.9


def test_success_episode_discounts_the_final_reward():
    # Sparse 0/1 reward transformed by x10 - 5 (Cal-QL's AntMaze setting): -5, -5, +5, then terminated.
    g = monte_carlo_returns(np.array([0.0, 0.0, 1.0]), True, GAMMA, 10.0, -5.0, sparse_negative=-5.0)
    g2 = 5.0
    g1 = -5.0 + GAMMA * g2
    g0 = -5.0 + GAMMA * g1
    np.testing.assert_allclose(g, [g0, g1, g2], rtol=1e-6)


@pytest.mark.parametrize("terminated", [True, False])
def test_failure_forever_gives_r_neg_over_one_minus_gamma_everywhere(terminated):
    g = monte_carlo_returns(np.zeros(4), terminated, GAMMA, 10.0, -5.0, sparse_negative=-5.0)
    np.testing.assert_allclose(g, np.full(4, -5.0 / (1 - GAMMA)), rtol=1e-6)


def test_truncated_episode_bootstraps_the_tail_with_the_worst_reward_forever():
    # Reached the goal once (+5) mid-episode, then cut by the time limit: not a failure forever, but the tail
    # beyond the cut is unknown, so it is valued at r_neg / (1 - gamma), a lower bound.
    tail = -5.0 / (1 - GAMMA)
    g = monte_carlo_returns(np.array([0.0, 1.0, 0.0]), False, GAMMA, 10.0, -5.0, sparse_negative=-5.0)
    g2 = -5.0 + GAMMA * tail
    g1 = 5.0 + GAMMA * g2
    g0 = -5.0 + GAMMA * g1
    np.testing.assert_allclose(g, [g0, g1, g2], rtol=1e-6)
    # The same rewards terminated instead: the tail is 0.
    g_term = monte_carlo_returns(np.array([0.0, 1.0, 0.0]), True, GAMMA, 10.0, -5.0, sparse_negative=-5.0)
    assert g_term[-1] == pytest.approx(-5.0) and np.all(g_term > g)


def test_without_the_sparse_rule_it_is_the_plain_discounted_return():
    rewards = np.array([1.0, 2.0, 3.0])
    for terminated in (True, False):
        g = monte_carlo_returns(rewards, terminated, GAMMA)
        np.testing.assert_allclose(g, [1 + GAMMA * (2 + GAMMA * 3), 2 + GAMMA * 3, 3], rtol=1e-6)
    # The transform is applied before discounting.
    np.testing.assert_allclose(monte_carlo_returns(rewards, True, GAMMA, 2.0, 1.0),
                               monte_carlo_returns(rewards * 2.0 + 1.0, True, GAMMA), rtol=1e-6)
