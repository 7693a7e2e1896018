"""The conservative terms of CQL (arXiv 2006.04779) and Cal-QL (arXiv 2303.05479), as pure tensor functions.

Each function takes Q values already computed by the critics and returns a loss (or target) with its metrics, so
every term can be checked on its own: by hand on a tiny batch, and for which tensors its gradient reaches. Shapes:
``E`` critics, ``B`` batch rows, ``N`` sampled actions per row.

Following Cal-QL's official code: all Q values of the regulariser are evaluated at ``s`` (also those of actions
drawn from pi(.|s')); log-probabilities enter detached; uniform actions are importance-weighted by their density
``0.5^|A|`` on [-1, 1]^|A|; only the policy-action values are floored at the Monte-Carlo return.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Metrics = dict[str, Tensor]


def uniform_log_density(action_dim: int) -> float:
    """log of the uniform density on [-1, 1]^action_dim."""
    return action_dim * math.log(0.5)


def calibrate(q_policy: Tensor, mc_return: Tensor) -> tuple[Tensor, Tensor]:
    """Cal-QL's floor: ``max(Q, G)`` for policy-action values ``[E, B, N]`` with ``G`` per row ``[B]``; also the
    fraction of values the floor raised (the "bound rate"). Values already above ``G`` keep their gradient; raised
    ones get none (the floor is a constant there)."""
    floor = mc_return.to(q_policy.dtype).view(1, -1, 1)
    bound_rate = (q_policy < floor).to(q_policy.dtype).mean().detach()
    return torch.maximum(q_policy, floor), bound_rate


def conservative_gap(q_data: Tensor, q_uniform: Tensor, q_pi: Tensor, q_next_pi: Tensor, logp_pi: Tensor,
                     logp_next_pi: Tensor, action_dim: int, temperature: float = 1.0,
                     mc_return: Tensor | None = None, importance_sample: bool = True) -> tuple[Tensor, Metrics]:
    """Per-critic CQL gap ``T * logsumexp(Q_ood / T) - Q(s, a_data)``, averaged over the batch: ``[E]``.

    ``q_data [E, B]``: Q(s, a) of the batch actions. ``q_uniform``, ``q_pi``, ``q_next_pi`` ``[E, B, N]``: Q(s, .)
    of uniform actions, of actions from pi(.|s) and of actions from pi(.|s'). ``logp_pi``, ``logp_next_pi`` ``[B, N]``:
    their log-probabilities. With ``mc_return [B]`` this is Cal-QL: policy-action values are floored at it first.
    Without ``importance_sample`` the logsumexp runs over the plain values plus ``Q(s, a_data)`` (CQL's "CQL(H)"
    variant in the official code).
    """
    metrics: Metrics = {}
    if mc_return is not None:
        q_pi, rate_pi = calibrate(q_pi, mc_return)
        q_next_pi, rate_next = calibrate(q_next_pi, mc_return)
        metrics["calql_bound_rate"] = 0.5 * (rate_pi + rate_next)
    if importance_sample:
        ood = torch.cat([q_uniform - uniform_log_density(action_dim),
                         q_pi - logp_pi.detach().unsqueeze(0),
                         q_next_pi - logp_next_pi.detach().unsqueeze(0)], dim=-1)
    else:
        ood = torch.cat([q_uniform, q_data.unsqueeze(-1), q_next_pi, q_pi], dim=-1)
    ood_value = temperature * torch.logsumexp(ood / temperature, dim=-1)  # [E, B]
    gap = (ood_value - q_data).mean(dim=1)
    metrics["cql_ood_value"] = ood_value.mean().detach()
    metrics["cql_gap"] = gap.mean().detach()
    return gap, metrics


def conservative_loss(gap: Tensor, cql_alpha: float, log_alpha_prime: Tensor | None = None,
                      target_gap: float = 0.0) -> tuple[Tensor, Tensor | None, Metrics]:
    """The critics' conservative penalty, summed over critics, and (Lagrange form) the loss of ``alpha'``.

    Fixed weight: ``cql_alpha * gap``. Lagrange form (``log_alpha_prime`` given): ``alpha' * cql_alpha *
    (gap - target_gap)`` with ``alpha' = clamp(exp(log_alpha_prime), 0, 1e6)``; ``alpha'`` itself is trained to
    maximise that term (its loss is the negative, with the gap detached), so it grows while the gap exceeds the
    target and shrinks below it.
    """
    if log_alpha_prime is None:
        return cql_alpha * gap.sum(), None, {}
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)
    penalty = alpha_prime.detach() * cql_alpha * (gap - target_gap)
    alpha_prime_loss = -(alpha_prime * cql_alpha * (gap.detach() - target_gap)).mean()
    return penalty.sum(), alpha_prime_loss, {"cql_alpha_prime": alpha_prime.detach()}


def max_target_backup(target_q: Tensor) -> Tensor:
    """Cal-QL/CQL's max-target backup: ``target_q [E, B, N]`` (target critics at N actions from pi(.|s')) ->
    ``max_n min_e`` per row ``[B]``."""
    return target_q.min(dim=0).values.max(dim=-1).values
