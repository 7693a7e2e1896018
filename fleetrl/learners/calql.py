"""CQL (arXiv 2006.04779) and Cal-QL (arXiv 2303.05479) as SAC plus a conservative critic regulariser.

Read top to bottom, one update is:

1. **Critic.** TD target with the max-target backup: ``N`` actions from pi(.|s'), the target critics' minimum at
   each, the maximum of those (no entropy term by default). Bellman loss = MSE per critic, summed over critics. Plus
   the conservative gap per critic (:func:`fleetrl.learners.cql.conservative_gap`): a logsumexp over ``N`` uniform
   actions, ``N`` actions from pi(.|s) and ``N`` from pi(.|s'), all evaluated at ``s`` and importance-weighted by
   their densities, minus Q of the data action. **Cal-QL** floors the two policy-action sets at the Monte-Carlo
   return ``mc_return`` first, so the regulariser never pushes Q below the value of the data-collecting policy.
   Weighted by ``alpha`` (or the Lagrange multiplier alpha').
2. **Actor and temperature** exactly as in :class:`~fleetrl.learners.sac.SAC`, with ``min`` over the critics.
3. Polyak step of the target critics.

The two classes differ only in the floor: :class:`CalQL` (calibrated) and :class:`CQL`. Every knob is a field of
:class:`fleetrl.config.CQLConfig` whose default is Cal-QL's published value. Pure PyTorch: no Ray, no Reverb.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from fleetrl.config import CQLConfig, RewardConfig
from fleetrl.learners.cql import conservative_gap, conservative_loss, max_target_backup
from fleetrl.learners.sac import SAC, Metrics
from fleetrl.types import TransitionBatch, TransitionSpec


class CQL(SAC):
    """Conservative Q-learning on SAC; ``calibrated=True`` is Cal-QL (see :class:`CalQL`)."""

    calibrated: bool = False

    def __init__(self, spec: TransitionSpec, cfg: CQLConfig, device: str | torch.device = "cpu", seed: int = 0,
                 reward: RewardConfig | None = None, encoder: Any = None) -> None:
        super().__init__(spec, cfg, device, seed, reward, encoder)
        self.cfg: CQLConfig = cfg
        self.action_dim = math.prod(spec.action.shape)
        self.log_alpha_prime: torch.nn.Parameter | None = None
        self.alpha_prime_optim: torch.optim.Optimizer | None = None
        if cfg.lagrange:
            self.log_alpha_prime = torch.nn.Parameter(torch.tensor(float(cfg.init_log_alpha_prime),
                                                                   device=self.device))
            self.alpha_prime_optim = torch.optim.Adam([self.log_alpha_prime], lr=cfg.alpha_prime_lr)

    # ------------------------------------------------------------------------------------------------ losses

    def _repeat(self, x: Tensor) -> Tensor:
        """``[B, D] -> [B * N, D]``, each row ``N`` times in a row (row ``b * N + n``)."""
        return x.repeat_interleave(self.cfg.num_actions, dim=0)

    def td_target(self, batch: TransitionBatch, next_obs: Tensor, actor_next_obs: Tensor) -> Tensor:
        """``y = r' + gamma * discount * V(s')`` with the max-target backup (or one sampled action without it).

        ``next_obs`` is the target critics' view of s', ``actor_next_obs`` the actor's (they differ on the image
        path, where each has its own encoder)."""
        cfg, n = self.cfg, self.cfg.num_actions
        b = next_obs.shape[0]
        with torch.no_grad():
            if cfg.max_target_backup:
                next_action, next_logp = self._sample_action(self._repeat(actor_next_obs))
                tq = self.target_critic(self._repeat(next_obs), next_action,
                                        members=self._target_members()).view(-1, b, n)
                next_q = max_target_backup(tq)
                if cfg.backup_entropy:  # entropy of the action the max picked
                    best = tq.min(dim=0).values.argmax(dim=-1, keepdim=True)
                    next_q = next_q - self.alpha() * next_logp.view(b, n).gather(1, best).squeeze(1)
            else:
                next_action, next_logp = self._sample_action(actor_next_obs)
                next_q = self.target_critic(next_obs, next_action, members=self._target_members()).min(dim=0).values
                if cfg.backup_entropy:
                    next_q = next_q - self.alpha() * next_logp
            return self.reward(batch) + cfg.gamma * batch.discount * next_q

    def critic_loss(self, batch: TransitionBatch) -> tuple[Tensor, Metrics]:
        """Bellman loss plus the weighted conservative gap (alpha' held fixed here); see the module docstring."""
        loss, metrics, _ = self._critic_objective(batch)
        return loss, metrics

    def _critic_objective(self, batch: TransitionBatch) -> tuple[Tensor, Metrics, Tensor | None]:
        cfg, n = self.cfg, self.cfg.num_actions
        obs, next_obs = self._critic_input(batch.obs), self._critic_input(batch.next_obs, target=True)
        with torch.no_grad():  # the actor only samples here: no gradient reaches it from the critic loss
            actor_obs, actor_next_obs = self._actor_input(batch.obs), self._actor_input(batch.next_obs)
        b = obs.shape[0]
        target_q = self.td_target(batch, next_obs, actor_next_obs)

        with torch.no_grad():  # the regulariser's actions
            uniform = torch.rand((b * n, self.action_dim), generator=self.generator, device=self.device) * 2 - 1
            pi_action, pi_logp = self._sample_action(self._repeat(actor_obs))
            next_pi_action, next_pi_logp = self._sample_action(self._repeat(actor_next_obs))

        q_data = self.critic(obs, batch.action.reshape(b, -1))  # [E, B]
        # One critic pass for all 3 * N actions per state, every one evaluated at s.
        rep = self._repeat(obs)
        q_ood = self.critic(rep.repeat(3, 1), torch.cat([uniform, pi_action, next_pi_action])).view(-1, 3, b, n)
        bellman = (q_data - target_q.unsqueeze(0)).square().mean(dim=1).sum()
        gap, gap_metrics = conservative_gap(
            q_data, q_ood[:, 0], q_ood[:, 1], q_ood[:, 2], pi_logp.view(b, n), next_pi_logp.view(b, n),
            self.action_dim, cfg.temperature, batch.mc_return if self.calibrated else None, cfg.importance_sample)
        penalty, alpha_prime_loss, penalty_metrics = conservative_loss(
            gap, cfg.alpha, self.log_alpha_prime, cfg.target_gap)
        loss = bellman + penalty
        metrics = {
            "critic_loss": loss.detach(), "bellman_loss": bellman.detach(), "cql_penalty": penalty.detach(),
            "q_mean": q_data.detach().mean(), "target_q_mean": target_q.mean(),
            "mc_return_mean": batch.mc_return.detach().float().mean(),
            **gap_metrics, **penalty_metrics,
        }
        return loss, metrics, alpha_prime_loss

    def _critic_step(self, batch: TransitionBatch) -> dict[str, Tensor]:
        loss, metrics, alpha_prime_loss = self._critic_objective(batch)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()
        if alpha_prime_loss is not None and self.alpha_prime_optim is not None:
            self.alpha_prime_optim.zero_grad(set_to_none=True)
            alpha_prime_loss.backward()
            self.alpha_prime_optim.step()
            metrics["alpha_prime_loss"] = alpha_prime_loss.detach()
        return metrics

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.log_alpha_prime is not None and self.alpha_prime_optim is not None:
            state["log_alpha_prime"] = self.log_alpha_prime.detach().clone()
            # A copy, as in SAC.state_dict: the optimiser's moments are live tensors later steps would change.
            state["alpha_prime_optim"] = copy.deepcopy(self.alpha_prime_optim.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.log_alpha_prime is not None and self.alpha_prime_optim is not None and "log_alpha_prime" in state:
            with torch.no_grad():
                self.log_alpha_prime.copy_(state["log_alpha_prime"])
            self.alpha_prime_optim.load_state_dict(copy.deepcopy(state["alpha_prime_optim"]))


class CalQL(CQL):
    """Cal-QL: CQL whose policy-action values in the regulariser are floored at the Monte-Carlo return."""

    calibrated = True
