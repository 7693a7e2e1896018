"""OGPO (arXiv 2605.03065): fine-tune a flow policy online with PPO inside its denoising chain.

One :meth:`OGPO.update`, read top to bottom:

1. **Critic.** An ensemble of ``M`` Q heads on ``(s, chunk)`` learns chunked TD: a chunk of ``H`` executed actions
   earns ``Σ_i γ^i r_i`` and bootstraps with ``γ^n`` from the state after it (``n = H`` unless the episode ended
   inside the chunk). The target is the **mean** of the target heads at a next chunk sampled from the old policy,
   averaged over ``q_target_samples`` samples (Q-target variance reduction).
2. **Chains.** For each of ``ppo_states`` states, ``chains_per_state`` stochastic denoising chains are sampled from
   the old policy ``θ̄`` (an EMA of ``θ``). Each chain's reward is ``Q(s, clip(x_K))``.
3. **Advantage.** The chain's Q minus the mean over the chains of its state (no std normalisation); or, with
   ``conservative_advantage``, per head, kept only where every head agrees on the sign. With ``chains_per_noise``
   above 1 the mean is over the chains that share the chain's starting noise ``x_0`` instead.
4. **PPO.** ``ω = π_θ(chain) / π_θ̄(chain)`` from the per-step Gaussian likelihoods (``flow.chain_log_prob``),
   loss ``-min(ω·A, clip(ω, 1 ± ε)·A)``; no backpropagation through the chain and no ``∇_a Q``. Optional terms:
   success-buffer flow BC and a χ² penalty against a slow EMA reference.
5. EMA steps of the target critics, the old policy and the reference.

Each loss term is its own function returning ``(loss, metrics)``. Pure PyTorch: no Ray, no Reverb.

**Chunk batches.** :meth:`OGPO.update` takes a :class:`TransitionBatch` whose ``action`` is ``[B, H, A]`` (the
executed chunk), ``reward`` is ``[B, H]`` and ``discount`` is ``[B, H]``: 1 for the chunk's executed steps and 0 for
padding past the episode's end (a prefix of ones); ``terminated [B]`` says the episode terminated inside the chunk
and ``next_obs`` is the state after the last executed step.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fleetrl.config import EncoderConfig, FlowConfig, OGPOConfig, RewardConfig
from fleetrl.core import Weights
from fleetrl.learners.flow import chain_log_prob, euler_sample, flow_matching_loss, sample_chain_with_log_prob
from fleetrl.learners.flow_bc import set_actor_obs_normalization
from fleetrl.learners.flow_policy import FlowActor, flow_actor_weights
from fleetrl.learners.image_obs import build_image_encoder
from fleetrl.learners.networks import CriticEnsemble, obs_vector
from fleetrl.types import TransitionBatch, TransitionSpec

Metrics = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------- loss terms


def chunk_td_target(rewards: Tensor, valid: Tensor, terminated: Tensor, next_value: Tensor, gamma: float) -> Tensor:
    """``y = Σ_{i<n} γ^i r_i + γ^n (1 - terminated) V(s')``, ``n = Σ_i valid_i`` (``rewards, valid [B, H]``,
    ``terminated, next_value [B]``)."""
    valid = valid.to(rewards.dtype)
    powers = gamma ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)
    n = valid.sum(-1)
    return (rewards * valid * powers).sum(-1) + gamma ** n * (1.0 - terminated.to(rewards.dtype)) * next_value


def ensemble_td_loss(q: Tensor, target: Tensor) -> tuple[Tensor, Metrics]:
    """Squared TD error of every head ``q [M, B]`` against the shared ``target [B]``, averaged."""
    loss = (q - target.unsqueeze(0)).square().mean()
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "target_q_mean": target.mean()}


def group_advantage(q: Tensor) -> Tensor:
    """``q [M, P, G]`` (heads, states, chains) -> ``[P, G]``: the heads' mean minus its mean over the state's
    chains. Sums to zero per state; not divided by a std (OGPO: normalising hurts)."""
    q_mean = q.mean(0)
    return q_mean - q_mean.mean(-1, keepdim=True)


def conservative_advantage(q: Tensor) -> Tensor:
    """Per-head group advantages ``[M, P, G]`` reduced to ``[P, G]``: where every head's is positive, the smallest
    (min); where every head's is negative, the one closest to zero (max); where the heads disagree, 0."""
    a = q - q.mean(-1, keepdim=True)
    agree_pos, agree_neg = (a > 0).all(0), (a < 0).all(0)
    return torch.where(agree_pos, a.min(0).values, torch.where(agree_neg, a.max(0).values, torch.zeros_like(a[0])))


def chain_advantage(q: Tensor, chains_per_noise: int = 1, conservative: bool = False) -> Tensor:
    """``q [M, P, G]`` (heads, states, chains) -> advantages ``[P, G]``, by :func:`group_advantage` or
    :func:`conservative_advantage`. The baseline group is a state's ``G`` chains (``chains_per_noise = 1``: each
    chain has its own ``x_0``), or with ``chains_per_noise = c > 1`` each run of ``c`` consecutive chains (those
    sharing a starting noise ``x_0``)."""
    m, p, g = q.shape
    size = chains_per_noise if chains_per_noise > 1 else g
    grouped = q.reshape(m, p * g // size, size)
    adv = conservative_advantage(grouped) if conservative else group_advantage(grouped)
    return adv.reshape(p, g)


def ppo_chain_loss(log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor, clip: float) -> tuple[Tensor, Metrics]:
    """Clipped surrogate on whole chains: ``-mean(min(ω·A, clip(ω, 1 - ε, 1 + ε)·A))``, ``ω = exp(log π_θ - log π_θ̄)``.

    ``log_prob`` carries the gradient; ``old_log_prob`` and ``advantage`` are constants."""
    ratio = (log_prob - old_log_prob.detach()).exp()
    adv = advantage.detach()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    loss = -surrogate.mean()
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip).to(ratio.dtype).mean()
    return loss, {"ppo_loss": loss.detach(), "ratio_mean": ratio.detach().mean(), "clip_fraction": clipped,
                  "advantage_abs_mean": adv.abs().mean()}


CHI2_LINEAR_FROM = 10.0
"""Log-ratio beyond which :func:`chi2_penalty` continues the ratio linearly instead of exponentially."""


def chi2_penalty(log_prob: Tensor, ref_log_prob: Tensor) -> tuple[Tensor, Metrics]:
    """``mean((π_θ / π_ref - 1)²)`` over the sampled chains (``ref_log_prob`` constant): keeps the policy within a
    χ² ball of a slowly moving reference.

    Past a log-ratio of :data:`CHI2_LINEAR_FROM` the ratio is continued by its tangent (``e^c·(1 + Δ - c)``): the
    exact ``exp(Δ)²`` overflows float32 at Δ ≈ 44, and one such chain turned every weight into NaN in a probe run
    (scripts/ogpo_probe.py, WidowX lift); the tangent keeps the penalty and its pull back towards the reference
    finite and pointing the same way."""
    d = log_prob - ref_log_prob.detach()
    c = CHI2_LINEAR_FROM
    ratio = torch.where(d > c, math.exp(c) * (1.0 + d - c), d.clamp(max=c).exp())
    loss = (ratio - 1.0).square().mean()
    return loss, {"chi2": loss.detach()}


# ---------------------------------------------------------------------------------------------- the learner


class OGPO:
    """Implements :class:`fleetrl.core.Algorithm` for a :class:`FlowActor` and a chunk critic ensemble."""

    def __init__(self, spec: TransitionSpec, cfg: OGPOConfig, flow: FlowConfig, device: str | torch.device = "cpu",
                 seed: int = 0, reward: RewardConfig | None = None, encoder: EncoderConfig | None = None) -> None:
        self.spec, self.cfg, self.flow_cfg = spec, cfg, flow
        self.reward_cfg = reward or RewardConfig()
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = FlowActor(spec, flow, encoder).to(self.device)
            self.critic_encoder = build_image_encoder(spec, encoder or EncoderConfig())
            feat = self.critic_encoder.out_dim if self.critic_encoder is not None else 0
            self.critic = CriticEnsemble(self.actor.obs_mean.numel() + feat, self.actor.chunk_dim,
                                         cfg.critic_hidden_dims, cfg.num_critics, cfg.critic_layer_norm).to(self.device)
        if self.critic_encoder is not None:
            self.critic_encoder.to(self.device)
        self.old_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.ref_actor = copy.deepcopy(self.actor).requires_grad_(False) if cfg.chi2 else None
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_critic_encoder = (copy.deepcopy(self.critic_encoder).requires_grad_(False)
                                      if self.critic_encoder is not None else None)
        critic_params = [*self.critic.parameters(), *(self.critic_encoder.parameters() if self.critic_encoder
                                                      is not None else [])]
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.policy_lr)
        self.critic_optim = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.updates = 0  # for ppo_start_updates; saved with the state
        self._target_pairs = [(list(self.target_critic.parameters()), list(self.critic.parameters()))]
        if self.target_critic_encoder is not None and self.critic_encoder is not None:
            self._target_pairs.append((list(self.target_critic_encoder.parameters()),
                                       list(self.critic_encoder.parameters())))

    # ------------------------------------------------------------------------------------------------ helpers

    def reward(self, batch: TransitionBatch) -> Tensor:
        """Per-step rewards ``[B, H]`` as the learner sees them: ``reward * scale + bias``."""
        return batch.reward.to(torch.float32) * self.reward_cfg.scale + self.reward_cfg.bias

    def _critic_features(self, obs: dict[str, Tensor], target: bool = False, augment: bool = True) -> Tensor:
        state = (obs_vector(obs, self.actor.obs_keys) - self.actor.obs_mean) / self.actor.obs_std
        encoder = self.target_critic_encoder if target else self.critic_encoder
        if encoder is None:
            return state
        return torch.cat([state, encoder(obs, augment=augment, generator=self.generator)], dim=-1)

    def _flat(self, chunk: Tensor) -> Tensor:
        return chunk.reshape(chunk.shape[0], -1).to(torch.float32)

    # ------------------------------------------------------------------------------------------------ losses

    def critic_loss(self, batch: TransitionBatch) -> tuple[Tensor, Metrics]:
        """Chunked TD of every head against the mean of the target heads (see the module docstring)."""
        cfg, flow = self.cfg, self.flow_cfg
        with torch.no_grad():
            samples = cfg.q_target_samples
            next_feat = self.old_actor.features(batch.next_obs).repeat_interleave(samples, dim=0)
            noise = torch.randn((next_feat.shape[0], self.actor.chunk_dim), generator=self.generator,
                                device=self.device)
            next_chunk = euler_sample(self.old_actor.velocity, next_feat, flow.denoise_steps, noise).clamp(-1, 1)
            critic_next = self._critic_features(batch.next_obs, target=True).repeat_interleave(samples, dim=0)
            next_q = self.target_critic(critic_next, next_chunk).mean(0).reshape(-1, samples).mean(-1)
            target = chunk_td_target(self.reward(batch), batch.discount, batch.terminated, next_q, cfg.gamma)
        q = self.critic(self._critic_features(batch.obs), self._flat(batch.action))
        return ensemble_td_loss(q, target)

    def policy_loss(self, batch: TransitionBatch, bc_batch: TransitionBatch | None = None) -> tuple[Tensor, Metrics]:
        """PPO on chains from the old policy, plus the optional success BC and χ² terms."""
        cfg, flow = self.cfg, self.flow_cfg
        p = min(cfg.ppo_states, batch.action.shape[0])
        obs = {k: v[:p] for k, v in batch.obs.items()}
        g, c = cfg.chains_per_state, cfg.chains_per_noise
        with torch.no_grad():
            old_feat = self.old_actor.features(obs).repeat_interleave(g, dim=0)
            x0 = torch.randn((p * g // c, self.actor.chunk_dim), generator=self.generator, device=self.device)
            chains, old_log_prob = sample_chain_with_log_prob(self.old_actor.velocity, old_feat, flow.denoise_steps,
                                                              cfg.noise_scale, self.generator,
                                                              noise=x0.repeat_interleave(c, dim=0))
            chunk = chains[:, -1].clamp(-1.0, 1.0)
            q = self.critic(self._critic_features(obs, augment=False).repeat_interleave(g, dim=0), chunk)
            adv = chain_advantage(q.reshape(q.shape[0], p, g), c, cfg.conservative_advantage)
        feat = self.actor.features(obs).repeat_interleave(g, dim=0)
        log_prob = chain_log_prob(self.actor.velocity, feat, chains, cfg.noise_scale).reshape(p, g)
        loss, metrics = ppo_chain_loss(log_prob, old_log_prob.reshape(p, g), adv, cfg.clip)
        ppo_on = self.updates >= cfg.ppo_start_updates
        loss = (cfg.ppo_coef if ppo_on else 0.0) * loss
        metrics["ppo_on"] = torch.tensor(float(ppo_on))
        metrics["advantage_zero_fraction"] = (adv == 0).to(torch.float32).mean()
        if self.ref_actor is not None:
            with torch.no_grad():
                ref_log_prob = chain_log_prob(self.ref_actor.velocity, self.ref_actor.features(obs).repeat_interleave(
                    g, dim=0), chains, cfg.noise_scale).reshape(p, g)
            chi2, chi2_metrics = chi2_penalty(log_prob, ref_log_prob)
            loss, metrics = loss + cfg.chi2_coef * chi2, {**metrics, **chi2_metrics}
        if cfg.success_bc and bc_batch is not None and bc_batch.action.shape[0] > 0:
            bc_feat = self.actor.features(bc_batch.obs, augment=True, generator=self.generator)
            mask = bc_batch.discount if bc_batch.discount.dim() == 2 else None
            bc, bc_metrics = flow_matching_loss(self.actor.velocity, bc_feat, bc_batch.action, self.generator, mask)
            loss, metrics = loss + cfg.success_bc_coef * bc, {**metrics, **bc_metrics}
        return loss, metrics

    # ------------------------------------------------------------------------------------------------ update

    def update(self, batch: TransitionBatch, bc_batch: TransitionBatch | None = None) -> Metrics:
        """One critic step and one PPO step, then the EMA steps; detached 0-dim metrics. ``bc_batch``: chunks from
        the ``success`` table for success-buffer BC (None: no BC term this update)."""
        loss, metrics = self.critic_loss(batch)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optim.step()

        loss, policy_metrics = self.policy_loss(batch, bc_batch)
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optim.step()

        with torch.no_grad():
            for target, online in self._target_pairs:
                torch._foreach_lerp_(target, online, self.cfg.target_tau)
            torch._foreach_lerp_(list(self.old_actor.parameters()), list(self.actor.parameters()),
                                 self.cfg.old_policy_ema)
            if self.ref_actor is not None:
                torch._foreach_lerp_(list(self.ref_actor.parameters()), list(self.actor.parameters()),
                                     self.cfg.chi2_reference_ema)
        self.updates += 1
        return {**metrics, **policy_metrics}

    # ------------------------------------------------------------------------------------------------ policy / state

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise the state vector (actor, old and reference policies, critics) with these statistics."""
        for actor in (self.actor, self.old_actor, self.ref_actor):
            if actor is not None:
                set_actor_obs_normalization(actor, mean, std)

    def policy_weights(self) -> Weights:
        """The shipped :class:`FlowChunkPolicy`'s weights (the current ``θ``), never the critics."""
        return flow_actor_weights(self.actor)

    def state_dict(self) -> dict[str, Any]:
        """An independent snapshot of networks, EMA copies, optimisers and the RNG."""
        state: dict[str, Any] = {"actor": self.actor.state_dict(), "old_actor": self.old_actor.state_dict(),
                                 "critic": self.critic.state_dict(), "target_critic": self.target_critic.state_dict(),
                                 "actor_optim": self.actor_optim.state_dict(),
                                 "critic_optim": self.critic_optim.state_dict(),
                                 "generator": self.generator.get_state(), "updates": self.updates}
        for name in ("ref_actor", "critic_encoder", "target_critic_encoder"):
            module = getattr(self, name)
            if module is not None:
                state[name] = module.state_dict()
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; later updates continue exactly on the same device.

        A flow BC state (``fleetrl pretrain``, ``kind: flow-bc``) initialises the policy, the old policy and the
        reference from the cloned policy and leaves the critics and optimisers fresh (``--init-from``)."""
        if state.get("kind") == "flow-bc":
            for actor in (self.actor, self.old_actor, self.ref_actor):
                if actor is not None:
                    actor.load_state_dict(state["actor"])
            return
        state = copy.deepcopy(state)
        names = ("actor", "old_actor", "critic", "target_critic", "ref_actor", "critic_encoder",
                 "target_critic_encoder")
        for name in names:  # every check before anything is loaded: a refused state leaves the learner as it was
            if (getattr(self, name) is None) != (name not in state):
                raise ValueError(f"OGPO state: {name} is {'unexpected' if name in state else 'missing'} "
                                 "(learner.ogpo.chi2 or image observations differ from the checkpoint's)")
        for name in names:
            module = getattr(self, name)
            if module is not None:
                module.load_state_dict(state[name])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.generator.set_state(state["generator"].cpu())
        self.updates = int(state.get("updates", 0))  # a state saved before the counter existed: from 0
