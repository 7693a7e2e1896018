"""CQL / Cal-QL conservative terms on tiny batches: values computed by hand, and where the gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from fleetrl.learners.cql import (
    calibrate,
    conservative_gap,
    conservative_loss,
    max_target_backup,
    uniform_log_density,
)

# One critic, one row, two sampled actions, |A| = 1.
Q_DATA = [[1.0]]
Q_UNIFORM = [[[0.0, 0.5]]]
Q_PI = [[[2.0, -1.0]]]
Q_NEXT_PI = [[[0.0, 0.25]]]
LOGP_PI = [[0.1, -0.2]]
LOGP_NEXT_PI = [[0.0, 0.3]]


def _tensors(requires_grad: bool = False):
    return [torch.tensor(x, dtype=torch.float64, requires_grad=requires_grad)
            for x in (Q_DATA, Q_UNIFORM, Q_PI, Q_NEXT_PI, LOGP_PI, LOGP_NEXT_PI)]


def test_cql_gap_equals_the_hand_computed_value():
    q_data, q_u, q_pi, q_next, lp, lp_next = _tensors()
    gap, metrics = conservative_gap(q_data, q_u, q_pi, q_next, lp, lp_next, action_dim=1)
    log_half = math.log(0.5)
    terms = [0.0 - log_half, 0.5 - log_half, 2.0 - 0.1, -1.0 + 0.2, 0.0 - 0.0, 0.25 - 0.3]
    expected = math.log(sum(math.exp(t) for t in terms)) - 1.0
    assert gap.shape == (1,)
    assert gap.item() == pytest.approx(expected, abs=1e-12)
    assert "calql_bound_rate" not in metrics


def test_calql_gap_floors_policy_values_at_the_mc_return_by_hand():
    q_data, q_u, q_pi, q_next, lp, lp_next = _tensors()
    g = 0.5
    gap, metrics = conservative_gap(q_data, q_u, q_pi, q_next, lp, lp_next, action_dim=1,
                                    mc_return=torch.tensor([g], dtype=torch.float64))
    log_half = math.log(0.5)
    # Uniform values are not floored; policy values below G become G (2.0 stays, -1.0, 0.0 and 0.25 rise to 0.5).
    terms = [0.0 - log_half, 0.5 - log_half, 2.0 - 0.1, g + 0.2, g - 0.0, g - 0.3]
    expected = math.log(sum(math.exp(t) for t in terms)) - 1.0
    assert gap.item() == pytest.approx(expected, abs=1e-12)
    # 1 of 2 values from pi(.|s) and 2 of 2 from pi(.|s') were raised.
    assert metrics["calql_bound_rate"].item() == pytest.approx(0.5 * (1 / 2 + 2 / 2))


def test_temperature_scales_the_logsumexp():
    q_data, q_u, q_pi, q_next, lp, lp_next = _tensors()
    t = 2.0
    gap, _ = conservative_gap(q_data, q_u, q_pi, q_next, lp, lp_next, action_dim=1, temperature=t)
    log_half = math.log(0.5)
    terms = [0.0 - log_half, 0.5 - log_half, 2.0 - 0.1, -1.0 + 0.2, 0.0, 0.25 - 0.3]
    expected = t * math.log(sum(math.exp(x / t) for x in terms)) - 1.0
    assert gap.item() == pytest.approx(expected, abs=1e-12)


def test_floor_touches_only_policy_action_values():
    """Gradients: uniform-action values and Q(s, a_data) get the same gradient with and without the floor; the
    policy-action values the floor raised get none; log-probabilities get none (they enter detached)."""
    grads = {}
    for name, g in (("cql", None), ("calql", torch.tensor([0.5], dtype=torch.float64))):
        q_data, q_u, q_pi, q_next, lp, lp_next = _tensors(requires_grad=True)
        gap, _ = conservative_gap(q_data, q_u, q_pi, q_next, lp, lp_next, action_dim=1, mc_return=g)
        gap.sum().backward()
        grads[name] = (q_data.grad, q_u.grad, q_pi.grad, q_next.grad, lp.grad, lp_next.grad)
    cql, calql = grads["cql"], grads["calql"]
    assert torch.equal(cql[0], calql[0]) and torch.equal(calql[0], torch.tensor([[-1.0]], dtype=torch.float64))
    assert torch.all(calql[1] > 0)  # uniform values still pushed down, by their softmax weight
    # Raised values (-1.0 from pi(.|s); both from pi(.|s')) get zero gradient; 2.0 keeps its gradient.
    assert calql[2][0, 0, 0] > 0 and calql[2][0, 0, 1] == 0
    assert torch.all(calql[3] == 0) and torch.all(cql[3] > 0)
    assert all(g is None for g in (*cql[4:], *calql[4:]))


def test_calibrate_is_elementwise_max_per_row():
    q = torch.tensor([[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 5.0], [2.0, -4.0]]])  # [E=2, B=2, N=2]
    floored, rate = calibrate(q, torch.tensor([0.5, 1.0]))
    expected = torch.tensor([[[1.0, 0.5], [1.0, 3.0]], [[0.5, 5.0], [2.0, 1.0]]])
    assert torch.equal(floored, expected)
    assert rate.item() == pytest.approx(4 / 8)


def test_gap_is_per_critic_and_batch_mean():
    torch.manual_seed(0)
    e, b, n = 3, 5, 4
    q_data, q_u, q_pi, q_next = torch.randn(e, b), torch.randn(e, b, n), torch.randn(e, b, n), torch.randn(e, b, n)
    lp, lp_next = torch.randn(b, n), torch.randn(b, n)
    gap, _ = conservative_gap(q_data, q_u, q_pi, q_next, lp, lp_next, action_dim=7)
    for i in range(e):
        one, _ = conservative_gap(q_data[i:i + 1], q_u[i:i + 1], q_pi[i:i + 1], q_next[i:i + 1], lp, lp_next, 7)
        assert gap[i].item() == pytest.approx(one.item(), rel=1e-6)
    assert uniform_log_density(7) == pytest.approx(7 * math.log(0.5))


def test_fixed_weight_and_lagrange_losses():
    gap = torch.tensor([2.0, 1.0], requires_grad=True)
    penalty, alpha_loss, _ = conservative_loss(gap, cql_alpha=5.0)
    assert alpha_loss is None and penalty.item() == pytest.approx(5.0 * 3.0)

    log_ap = torch.tensor(math.log(2.0), requires_grad=True)
    penalty, alpha_loss, metrics = conservative_loss(gap, cql_alpha=5.0, log_alpha_prime=log_ap, target_gap=0.8)
    assert penalty.item() == pytest.approx(2.0 * 5.0 * ((2.0 - 0.8) + (1.0 - 0.8)))
    assert alpha_loss.item() == pytest.approx(-2.0 * 5.0 * ((2.0 - 0.8) + (1.0 - 0.8)) / 2)
    assert metrics["cql_alpha_prime"].item() == pytest.approx(2.0)
    # The penalty's gradient reaches the critics' gap only; alpha' learns from its own loss only.
    penalty.backward(retain_graph=True)
    assert log_ap.grad is None and torch.allclose(gap.grad, torch.tensor([10.0, 10.0]))
    gap.grad = None
    alpha_loss.backward()
    assert gap.grad is None and log_ap.grad.item() < 0  # gap above target: descending raises alpha'


def test_max_target_backup_is_max_over_actions_of_min_over_critics():
    target_q = torch.tensor([[[1.0, 4.0, 2.0]], [[3.0, 0.0, 2.5]]])  # [E=2, B=1, N=3]
    # min over critics: [1.0, 0.0, 2.0] -> max over actions: 2.0
    assert max_target_backup(target_q).tolist() == [2.0]
