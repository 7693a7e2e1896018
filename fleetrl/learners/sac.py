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

from fleetrl.config import EncoderConfig, RewardConfig, SACConfig
from fleetrl.core import Policy, Weights
from fleetrl.learners.image_obs import build_image_encoder
from fleetrl.learners.networks import CriticEnsemble, TanhGaussianActor, obs_vector
from fleetrl.learners.policy import checked_obs_stats, make_policy, policy_obs_dim, policy_obs_keys
from fleetrl.types import TransitionBatch, TransitionSpec

Metrics = dict[str, Tensor]


class SAC:
    """RLPD-style SAC; implements :class:`fleetrl.core.Algorithm` (metrics are detached tensors, not floats)."""

    def __init__(self, spec: TransitionSpec, cfg: SACConfig, device: str | torch.device = "cpu", seed: int = 0,
                 reward: RewardConfig | None = None, encoder: EncoderConfig | None = None) -> None:
        self.spec = spec
        self.cfg = cfg
        self.reward_cfg = reward or RewardConfig()
        self.encoder_cfg = encoder or EncoderConfig()
        self.device = torch.device(device)
        self.obs_keys = policy_obs_keys(spec)  # the same rule as the shipped policy
        obs_dim = policy_obs_dim(spec)
        action_dim = math.prod(spec.action.shape)
        self.target_entropy = float(cfg.target_entropy) if cfg.target_entropy is not None else -float(action_dim)

        # Initialise from `seed` alone, without consuming or depending on the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Image observations: the actor and the critics each have their own CNN (PTR, arXiv 2210.05178), so each
            # encoder is trained by its own loss only. None on the state-only path.
            self.actor_encoder = build_image_encoder(spec, self.encoder_cfg)
            self.critic_encoder = build_image_encoder(spec, self.encoder_cfg)
            feat = self.actor_encoder.out_dim if self.actor_encoder is not None else 0
            self.actor = TanhGaussianActor(obs_dim + feat, action_dim, cfg.hidden_dims).to(self.device)
            self.critic = CriticEnsemble(obs_dim + feat, action_dim, cfg.hidden_dims, cfg.num_critics,
                                         cfg.critic_layer_norm).to(self.device)
        if self.actor_encoder is not None and self.critic_encoder is not None:
            self.actor_encoder.to(self.device)
            self.critic_encoder.to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_critic_encoder = (copy.deepcopy(self.critic_encoder).requires_grad_(False)
                                      if self.critic_encoder is not None else None)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.init_temperature), device=self.device))

        self.actor_optim = torch.optim.Adam(self._actor_modules_params(), lr=cfg.actor_lr)
        self.critic_optim = torch.optim.Adam(self._critic_modules_params(), lr=cfg.critic_lr)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)

        # All randomness of an update (action noise, critic subsets, image shifts) comes from this generator, which
        # is part of the saved state, so a restored learner continues bit-identically.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

        # State-vector standardisation (learner.normalize_obs); identity until set_obs_normalization.
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)

        self._target_params = list(self.target_critic.parameters())
        self._online_params = list(self.critic.parameters())
        if self.target_critic_encoder is not None and self.critic_encoder is not None:
            self._target_params += list(self.target_critic_encoder.parameters())
            self._online_params += list(self.critic_encoder.parameters())

    def _actor_modules_params(self) -> list[torch.nn.Parameter]:
        enc = list(self.actor_encoder.parameters()) if self.actor_encoder is not None else []
        return [*self.actor.parameters(), *enc]

    def _critic_modules_params(self) -> list[torch.nn.Parameter]:
        enc = list(self.critic_encoder.parameters()) if self.critic_encoder is not None else []
        return [*self.critic.parameters(), *enc]

    # ------------------------------------------------------------------------------------------------ helpers

    def alpha(self) -> Tensor:
        """Current temperature ``exp(log_alpha)``, detached."""
        return self.log_alpha.detach().exp()

    def _obs(self, obs: dict[str, Tensor]) -> Tensor:
        return (obs_vector(obs, self.obs_keys) - self.obs_mean) / self.obs_std

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise the state vector (``obs_keys`` concatenated) with these statistics from now on."""
        mean, std = checked_obs_stats(mean, std, self.obs_mean.numel())
        self.obs_mean = torch.as_tensor(mean, device=self.device)
        self.obs_std = torch.as_tensor(std, device=self.device)

    def _with_images(self, obs: dict[str, Tensor], encoder: torch.nn.Module | None) -> Tensor:
        """State vector, followed by the encoder's image features (random-shifted: this is a training pass)."""
        state = self._obs(obs)
        if encoder is None:
            return state
        return torch.cat([state, encoder(obs, augment=True, generator=self.generator)], dim=-1)

    def _actor_input(self, obs: dict[str, Tensor]) -> Tensor:
        """What the actor reads (its own encoder's features on the image path)."""
        return self._with_images(obs, self.actor_encoder)

    def _critic_input(self, obs: dict[str, Tensor], target: bool = False) -> Tensor:
        """What the critics read; ``target`` uses the target critics' encoder (no gradient)."""
        if target:
            with torch.no_grad():
                return self._with_images(obs, self.target_critic_encoder)
        return self._with_images(obs, self.critic_encoder)

    def reward(self, batch: TransitionBatch) -> Tensor:
        """The reward the learner trains on: ``reward * scale + bias`` (``learner.reward``)."""
        r = batch.reward.to(torch.float32)
        if self.reward_cfg.scale != 1.0 or self.reward_cfg.bias != 0.0:
            r = r * self.reward_cfg.scale + self.reward_cfg.bias
        return r

    def _policy_value(self, q: Tensor) -> Tensor:
        """Reduce ``Q [E, B]`` over the ensemble for the actor loss (``policy_q``)."""
        return q.mean(dim=0) if self.cfg.policy_q == "mean" else q.min(dim=0).values

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
            next_obs = self._critic_input(batch.next_obs, target=True)
            next_action, next_log_prob = self._sample_action(self._actor_input(batch.next_obs))
            next_q = self.target_critic(next_obs, next_action, members=self._target_members()).min(dim=0).values
            if self.cfg.backup_entropy:
                next_q = next_q - self.alpha() * next_log_prob
            target_q = self.reward(batch) + self.cfg.gamma * batch.discount * next_q

        action = batch.action.reshape(batch.action.shape[0], -1)
        q = self.critic(self._critic_input(batch.obs), action)  # [E, B]
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
        action, log_prob = self._sample_action(self._actor_input(batch.obs))
        with torch.no_grad():  # the critic's view of s; its encoder gets no gradient from the actor loss
            critic_obs = self._critic_input(batch.obs)
        # The critic is evaluated with detached parameters: dQ/da reaches the actor, nothing reaches the critic.
        # RLPD (arXiv 2302.02948) uses the ensemble *mean* for the actor (the min is for the target only); SAC and
        # Cal-QL the min (`policy_q`).
        q = self._policy_value(self.critic(critic_obs, action, detach_params=True))
        loss = (self.alpha() * log_prob - q).mean()
        metrics = {
            "actor_loss": loss.detach(),
            "entropy": -log_prob.detach().mean(),
            "actor_q_mean": q.detach().mean(),
        }
        return loss, metrics, log_prob

    def actor_loss(self, batch: TransitionBatch) -> tuple[Tensor, Metrics]:
        """``E[alpha * log pi(a~|s) - mean_e Q_e(s, a~)]`` (``min_e`` with ``policy_q: min``), ``a~ ~ pi(.|s)``
        reparameterised; only the actor (and its image encoder) gets grads.

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
                _, log_prob = self._sample_action(self._actor_input(batch_or_log_prob.obs))
        else:
            log_prob = batch_or_log_prob.detach()
        loss = (-self.log_alpha * (log_prob + self.target_entropy)).mean()
        return loss, {"temperature_loss": loss.detach()}

    # ------------------------------------------------------------------------------------------------ update

    def update(self, batch: TransitionBatch) -> dict[str, Tensor]:
        """One critic, actor and temperature step, then Polyak-average the targets; detached 0-dim metrics."""
        critic_metrics = self._critic_step(batch)

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

    def _critic_step(self, batch: TransitionBatch) -> dict[str, Tensor]:
        """One optimiser step on :meth:`critic_loss` (subclasses add terms here)."""
        loss, metrics = self.critic_loss(batch)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()
        return metrics

    # ------------------------------------------------------------------------------------------------ policy

    def policy_weights(self) -> Weights:
        """What the shipped policy loads, as fresh CPU numpy arrays: the actor's ``state_dict``, plus its image
        encoder's under ``encoder.`` on the image path (never the critics)."""
        state = dict(self.actor.state_dict())
        state.update({"obs_norm.mean": self.obs_mean, "obs_norm.std": self.obs_std})
        if self.actor_encoder is not None:
            state.update({f"encoder.{k}": v for k, v in self.actor_encoder.state_dict().items()})
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in state.items()}

    def make_policy(self) -> Policy:
        """A CPU policy (what actors run) holding the current actor weights."""
        policy = make_policy(self.spec, self.cfg.hidden_dims, self.encoder_cfg)
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
            "obs_norm": {"mean": self.obs_mean, "std": self.obs_std},
        }
        for name in ("actor_encoder", "critic_encoder", "target_critic_encoder"):
            module = getattr(self, name)
            if module is not None:
                state[name] = module.state_dict()
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
        for name in ("actor_encoder", "critic_encoder", "target_critic_encoder"):
            module = getattr(self, name)
            if (module is None) != (name not in state):
                raise ValueError(f"algorithm state: {name} is {'missing' if module is not None else 'unexpected'} "
                                 "(image observations in one of the learner and the checkpoint but not the other)")
            if module is not None:
                module.load_state_dict(state[name])
        if "obs_norm" in state:  # absent in checkpoints from before normalisation existed: identity
            self.set_obs_normalization(state["obs_norm"]["mean"].cpu().numpy(), state["obs_norm"]["std"].cpu().numpy())
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
