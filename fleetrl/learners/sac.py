"""Soft Actor-Critic in the RLPD style (arXiv 2302.02948), written to be read top to bottom.

SAC with a learned temperature (arXiv 1812.05905) plus RLPD's ingredients, all chosen in :class:`SACConfig`:
a critic ensemble whose TD target is the minimum over a random subset of target members (REDQ-style
``critic_subsample``), optional LayerNorm in the critics, and optional entropy in the backup.

One :meth:`SAC.update` = one critic step, one actor step, one temperature step, then a Polyak step of the target
critics. ``update`` returns detached 0-dim tensors and never calls ``.item()``, so on CUDA nothing synchronises until
the caller logs. Pure PyTorch: no Ray, no Reverb.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fleetrl.config import SACConfig
from fleetrl.core import Weights
from fleetrl.learners.networks import CriticEnsemble, TanhGaussianActor, obs_vector
from fleetrl.learners.policy import GaussianPolicy, policy_obs_dim, policy_obs_keys
from fleetrl.types import TransitionBatch, TransitionSpec

Metrics = dict[str, Tensor]


class SAC:
    """RLPD-style SAC; implements :class:`fleetrl.core.Algorithm` (metrics are detached tensors, not floats)."""

    def __init__(self, spec: TransitionSpec, cfg: SACConfig, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.spec = spec
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_keys = policy_obs_keys(spec)  # the same rule as the shipped GaussianPolicy
        obs_dim = policy_obs_dim(spec)
        action_dim = math.prod(spec.action.shape)
        self.target_entropy = float(cfg.target_entropy) if cfg.target_entropy is not None else -float(action_dim)

        # Initialise from `seed` alone, without consuming or depending on the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = TanhGaussianActor(obs_dim, action_dim, cfg.hidden_dims).to(self.device)
            self.critic = CriticEnsemble(obs_dim, action_dim, cfg.hidden_dims, cfg.num_critics,
                                         cfg.critic_layer_norm).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.init_temperature), device=self.device))

        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)

        # All randomness of an update (action noise, critic subsets) comes from this generator, which is part of
        # the saved state, so a restored learner continues bit-identically.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

        self._target_params = list(self.target_critic.parameters())
        self._online_params = list(self.critic.parameters())

    # ------------------------------------------------------------------------------------------------ helpers

    def alpha(self) -> Tensor:
        """Current temperature ``exp(log_alpha)``, detached."""
        return self.log_alpha.detach().exp()

    def _obs(self, obs: dict[str, Tensor]) -> Tensor:
        return obs_vector(obs, self.obs_keys)

    def _sample_action(self, obs_vec: Tensor) -> tuple[Tensor, Tensor]:
        return self.actor.sample(obs_vec, generator=self.generator)

    def _target_members(self) -> Tensor | None:
        """Random subset of target members whose minimum forms the TD target (REDQ / RLPD "2 of 10")."""
        k = self.cfg.critic_subsample
        if k is None or k == self.cfg.num_critics:
            return None
        perm = torch.randperm(self.cfg.num_critics, generator=self.generator, device=self.device)
        return perm[:k]

    # ------------------------------------------------------------------------------------------------ losses

    def critic_loss(self, batch: TransitionBatch) -> tuple[Tensor, Metrics]:
        """Mean squared TD error of every ensemble member against one shared soft target.

        ``y = r + gamma * discount * (min_{e in subset} Qbar_e(s', a') - alpha * log pi(a'|s'))`` with
        ``a' ~ pi(.|s')`` from the current actor; the entropy term only if ``backup_entropy``. ``discount`` is the
        env's continuation flag (0 at termination, 1 otherwise, also at a time-limit truncation).
        """
        with torch.no_grad():
            next_obs = self._obs(batch.next_obs)
            next_action, next_log_prob = self._sample_action(next_obs)
            next_q = self.target_critic(next_obs, next_action, members=self._target_members()).min(dim=0).values
            if self.cfg.backup_entropy:
                next_q = next_q - self.alpha() * next_log_prob
            target_q = batch.reward + self.cfg.gamma * batch.discount * next_q

        action = batch.action.reshape(batch.action.shape[0], -1)
        q = self.critic(self._obs(batch.obs), action)  # [E, B]
        # Mean over members and batch, as RLPD does; Adam makes the 1/E scale immaterial.
        loss = (q - target_q.unsqueeze(0)).square().mean()
        metrics = {
            "critic_loss": loss.detach(),
            "q_mean": q.detach().mean(),
            "q_ensemble_std": q.detach().std(dim=0).mean() if q.shape[0] > 1 else torch.zeros_like(loss.detach()),
            "target_q_mean": target_q.mean(),
        }
        return loss, metrics

    def _actor_objective(self, batch: TransitionBatch) -> tuple[Tensor, Metrics, Tensor]:
        obs = self._obs(batch.obs)
        action, log_prob = self._sample_action(obs)
        # The critic is evaluated with detached parameters: dQ/da reaches the actor, nothing reaches the critic.
        # RLPD (arXiv 2302.02948) uses the ensemble *mean* for the actor (the min is for the target only).
        q = self.critic(obs, action, detach_params=True).mean(dim=0)
        loss = (self.alpha() * log_prob - q).mean()
        metrics = {
            "actor_loss": loss.detach(),
            "entropy": -log_prob.detach().mean(),
            "actor_q_mean": q.detach().mean(),
        }
        return loss, metrics, log_prob

    def actor_loss(self, batch: TransitionBatch) -> tuple[Tensor, Metrics]:
        """``E[alpha * log pi(a~|s) - mean_e Q_e(s, a~)]``, ``a~ ~ pi(.|s)`` reparameterised; only the actor gets grads.

        Alpha is detached here; the critic is evaluated with detached parameters.
        """
        loss, metrics, _ = self._actor_objective(batch)
        return loss, metrics

    def temperature_loss(self, batch_or_log_prob: TransitionBatch | Tensor) -> tuple[Tensor, Metrics]:
        """``E[-log_alpha * (log pi(a~|s) + target_entropy)]`` (SAC arXiv 1812.05905 eq. 18, in log space).

        Takes the actor step's ``log_prob [B]`` (reused, detached) or a batch (then actions are sampled afresh).
        """
        if isinstance(batch_or_log_prob, TransitionBatch):
            with torch.no_grad():
                _, log_prob = self._sample_action(self._obs(batch_or_log_prob.obs))
        else:
            log_prob = batch_or_log_prob.detach()
        loss = (-self.log_alpha * (log_prob + self.target_entropy)).mean()
        return loss, {"temperature_loss": loss.detach()}

    # ------------------------------------------------------------------------------------------------ update

    def update(self, batch: TransitionBatch) -> dict[str, Tensor]:
        """One critic, actor and temperature step, then Polyak-average the targets; detached 0-dim metrics."""
        loss, critic_metrics = self.critic_loss(batch)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()

        loss, actor_metrics, log_prob = self._actor_objective(batch)
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optim.step()

        loss, temperature_metrics = self.temperature_loss(log_prob)
        self.alpha_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_optim.step()

        with torch.no_grad():  # target <- (1 - tau) * target + tau * online, one fused call for all tensors
            torch._foreach_lerp_(self._target_params, self._online_params, self.cfg.tau)

        return {**critic_metrics, **actor_metrics, **temperature_metrics, "alpha": self.alpha()}

    # ------------------------------------------------------------------------------------------------ policy

    def policy_weights(self) -> Weights:
        """The actor's ``state_dict`` as fresh CPU numpy arrays (what :meth:`GaussianPolicy.load_weights` takes)."""
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.actor.state_dict().items()}

    def make_policy(self) -> GaussianPolicy:
        """A CPU :class:`GaussianPolicy` holding the current actor weights."""
        policy = GaussianPolicy(self.spec, self.cfg.hidden_dims)
        policy.load_weights(self.policy_weights())
        return policy

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """An independent snapshot (tensors copied) of networks, targets, temperature, optimisers and RNG."""
        state = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "alpha_optim": self.alpha_optim.state_dict(),
            "generator": self.generator.get_state(),
        }
        # Deep copy: module and optimiser state dicts alias live tensors, which later updates would change under a
        # checkpoint that is still being written (or held in memory).
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`state_dict` saved; later updates continue exactly (bit-identical on CPU).

        ``state`` stays untouched: it is deep-copied first, because ``Optimizer.load_state_dict`` keeps the given
        moment tensors (no copy when device and dtype already match), and later steps would write into them.
        """
        state = copy.deepcopy(state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.alpha_optim.load_state_dict(state["alpha_optim"])
        saved = state["generator"].cpu()
        try:
            self.generator.set_state(saved)
        except RuntimeError:
            # Saved on another device type (CPU and CUDA generator states differ): continue with a seed derived from
            # the saved state, so a CPU run resumes on a GPU learner (bit-identity is impossible across devices).
            self.generator.manual_seed(int(hashlib.sha256(saved.numpy().tobytes()).hexdigest()[:15], 16))


def metrics_to_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """Sync once and turn :meth:`SAC.update`'s tensors into floats (call only when logging)."""
    values = torch.stack([v.float() for v in metrics.values()]).cpu().numpy() if metrics else np.zeros(0)
    return {k: float(x) for k, x in zip(metrics, values, strict=True)}
