"""Hyperparameters of the learning algorithms: one frozen, validated section per algorithm.

Split from :mod:`fleetrl.config` (which re-exports every class here) so the run configuration stays readable;
``learner.<algorithm>`` in a run's YAML is one of these. Each field's docstring says what it does and, where it
has one, the paper's value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class SACConfig:
    """SAC (RLPD-style) hyperparameters."""

    gamma: float = Field(0.99, gt=0, le=1)
    """Discount per env step."""
    tau: float = Field(0.005, gt=0, le=1)
    """Polyak rate of the target critics."""
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of actor and critics."""
    num_critics: int = Field(2, ge=1)
    """Critic ensemble size (REDQ/RLPD use 10)."""
    critic_subsample: int | None = Field(None, ge=1)
    """Ensemble members whose minimum forms the target (None = all; RLPD uses 2 of 10)."""
    critic_layer_norm: bool = False
    """LayerNorm after each critic hidden layer (RLPD)."""
    init_temperature: float = Field(1.0, gt=0)
    target_entropy: float | None = None
    """Entropy target; None means ``-action_dim``."""
    backup_entropy: bool = True
    """Subtract the entropy term inside the TD target."""
    policy_q: Literal["mean", "min"] = "mean"
    """How the actor loss reduces the critic ensemble: ``mean`` (RLPD) or ``min`` (SAC, CQL, Cal-QL)."""

    @model_validator(mode="after")
    def _subsample_fits(self) -> SACConfig:
        if self.critic_subsample is not None and self.critic_subsample > self.num_critics:
            raise ValueError(f"critic_subsample ({self.critic_subsample}) must be <= num_critics ({self.num_critics})")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError("hidden_dims must all be >= 1")
        return self


@dataclass(frozen=True, config=_STRICT)
class CQLConfig(SACConfig):
    """CQL (arXiv 2006.04779) and Cal-QL (arXiv 2303.05479) on top of SAC; defaults are Cal-QL's paper values.

    ``learner.algorithm: calql`` floors the policy-action values of the regulariser at the Monte-Carlo return;
    ``cql`` is the same learner without the floor. The inherited SAC fields keep their meaning; the ones whose
    paper value differs from SAC's are redefined here.
    """

    actor_lr: float = Field(1e-4, gt=0)
    """Policy learning rate (Cal-QL: 1e-4; critics 3e-4)."""
    alpha_lr: float = Field(1e-4, gt=0)
    """Temperature learning rate (Cal-QL's official code uses the policy's)."""
    backup_entropy: bool = False
    """Cal-QL's backup has no entropy term."""
    policy_q: Literal["mean", "min"] = "min"
    """The policy maximises ``min(Q1, Q2)`` (Cal-QL)."""
    alpha: float = Field(5.0, ge=0)
    """Weight of the conservative gap (alpha_cql; Cal-QL AntMaze 5, Adroit 1)."""
    lagrange: bool = False
    """Lagrange form: learn a multiplier alpha' that holds the gap at ``target_gap`` (Cal-QL AntMaze: on)."""
    target_gap: float = 0.8
    """Target of the gap in the Lagrange form (Cal-QL AntMaze: 0.8)."""
    alpha_prime_lr: float = Field(3e-4, gt=0)
    """Learning rate of alpha' (Lagrange form)."""
    init_log_alpha_prime: float = 1.0
    """Initial log alpha' (the official code starts it at 1.0)."""
    num_actions: int = Field(10, ge=1)
    """Actions sampled per state for the regulariser (uniform, pi(.|s), pi(.|s')) and the max-target backup."""
    temperature: float = Field(1.0, gt=0)
    """Temperature of the regulariser's logsumexp."""
    max_target_backup: bool = True
    """TD target: max over ``num_actions`` next actions of the min over target critics (Cal-QL: on)."""
    importance_sample: bool = True
    """Weight the logsumexp's actions by their sampling density (uniform 0.5^|A|, pi) (Cal-QL: on)."""


@dataclass(frozen=True, config=_STRICT)
class RewardConfig:
    """How the learner sees rewards, and the Monte-Carlo return rule; actors use the same for ``mc_return``."""

    scale: float = 1.0
    """The learner trains on ``reward * scale + bias`` (Cal-QL AntMaze: 10, -5; Adroit: 10, 5). With a shaped reward
    on a task that ends at success, map every non-success step below 0 (e.g. 1, -1 for rewards in [0, 1]): a
    positive step reward makes putting success off worth more than reaching it. Keep the values small for OGPO,
    whose critic starts online at 0: it fits ``r - 1`` in ~1200 updates and ``10 (r - 1)`` not in 2000
    (docs/algorithms.md)."""
    bias: float = 0.0
    sparse: bool = False
    """Sparse task: an episode whose every reward equals ``negative`` failed, and its Monte-Carlo return is
    ``r_neg / (1 - gamma)`` at every step (``r_neg`` the transformed ``negative``); a time-limit truncation is then
    valued at that too beyond its end (see docs/algorithms.md)."""
    negative: float = 0.0
    """The raw reward of a step that did not reach the goal (sparse tasks)."""

    def transformed_negative(self) -> float | None:
        """``r_neg`` in the learner's units, or None if the task is not sparse."""
        return self.negative * self.scale + self.bias if self.sparse else None


@dataclass(frozen=True, config=_STRICT)
class EncoderConfig:
    """The CNN that reads image observations (uint8 ``H x W x C`` keys); unused on the state-only path.

    A GroupNorm ResNet with a learned spatial embedding (PTR, arXiv 2210.05178); the actor and the critics each have
    their own. Images are random-shifted in every learner update (DrQ), never when acting."""

    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Width of each stride-2 stage (each halves the resolution; the image size must be divisible by 2**stages)."""
    groups: int = Field(8, ge=1)
    """GroupNorm groups (must divide every width)."""
    spatial_blocks: int = Field(8, ge=1)
    """Learned spatial weightings per channel of the last feature map."""
    out_dim: int = Field(256, ge=1)
    """Features per image key."""
    shift_pad: int = Field(4, ge=0)
    """Random-shift padding in pixels (0 = no augmentation)."""

    @model_validator(mode="after")
    def _groups_divide(self) -> EncoderConfig:
        if not self.channels or any(c < 1 or c % self.groups for c in self.channels):
            raise ValueError(f"groups ({self.groups}) must divide every entry of channels {list(self.channels)}")
        return self


@dataclass(frozen=True, config=_STRICT)
class FlowConfig:
    """A flow-matching policy over action chunks (``learner.flow``; OGPO and flow BC).

    The policy maps noise ``x_0 ~ N(0, I)`` over a chunk of ``horizon`` actions to an action chunk with
    ``denoise_steps`` Euler steps of a learned velocity field (rectified flow, ``x_t = t·x_1 + (1 - t)·x_0``). Actors
    execute the chunk's actions one env step at a time, clipped to ``[-1, 1]``."""

    horizon: int = Field(4, ge=1)
    """Actions per chunk, H (OGPO: 4)."""
    denoise_steps: int = Field(10, ge=1)
    """Euler steps K from noise to a chunk (OGPO: 10)."""
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    """Widths of the velocity field's MLP (OGPO: 4 x 512)."""
    time_features: int = Field(32, ge=2)
    """Sinusoidal features of the flow time t fed to the velocity field (even)."""
    layer_norm: bool = True
    """LayerNorm after each hidden layer of the velocity field."""
    bc_lr: float = Field(3e-4, gt=0)
    """Learning rate of flow BC (``fleetrl pretrain`` with ``learner.algorithm: flow-bc``)."""

    @model_validator(mode="after")
    def _even_time_features(self) -> FlowConfig:
        if self.time_features % 2:
            raise ValueError(f"time_features must be even (sin and cos pairs), got {self.time_features}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError("hidden_dims must all be >= 1")
        return self


@dataclass(frozen=True, config=_STRICT)
class OGPOConfig:
    """OGPO (arXiv 2605.03065): PPO inside the flow policy's denoising chain, scored by an off-policy critic.

    Defaults are the paper's values where ``docs/algorithms.md`` gives one; the rest are ours and say so."""

    gamma: float = Field(0.99, gt=0, le=1)
    """Discount per env step; a chunk of H steps is discounted by gamma**H (chunked TD)."""
    num_critics: int = Field(10, ge=1)
    """Q heads in the critic ensemble (OGPO: 10); the TD target is their mean."""
    critic_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    """Critic MLP widths (OGPO: 4 x 512, LayerNorm)."""
    critic_layer_norm: bool = True
    critic_lr: float = Field(3e-4, gt=0)
    target_tau: float = Field(0.005, gt=0, le=1)
    """EMA rate of the target critics (OGPO: 0.005-0.05)."""
    q_target_samples: int = Field(1, ge=1)
    """Next-chunk samples the TD target is averaged over; 8 is OGPO's Q-target variance reduction (1: off)."""
    policy_lr: float = Field(4.5e-5, gt=0)
    """Learning rate of the PPO step on the velocity field (OGPO: 4.5e-5)."""
    ppo_states: int = Field(256, ge=1)
    """States per PPO step, taken from the learner batch (OGPO: 256; at most ``learner.batch_size``)."""
    chains_per_state: int = Field(32, ge=2)
    """Denoising chains sampled per state from the old policy; the advantage is relative to their mean (OGPO: 32)."""
    chains_per_noise: int = Field(1, ge=1)
    """Chains that share one starting noise ``x_0``; with more than 1 each chain's advantage is relative to the mean
    of the chains sharing its ``x_0`` instead of its state's (ours; 1 = OGPO's per-state baseline). The chain
    likelihood is conditioned on ``x_0``, so this baseline keeps the gradient's expectation, and it removes the
    spread of Q over ``x_0``, which the PPO term cannot credit to anything (docs/algorithms.md). Must divide
    ``chains_per_state``."""
    clip: float = Field(0.01, gt=0, lt=1)
    """PPO ratio clip epsilon on the chain ratio (OGPO: 0.01)."""
    noise_scale: float = Field(0.05, gt=0)
    """Chain noise: the step std is sigma_t = noise_scale * sqrt(1 - t), tapering to 0 at the action (OGPO: 0.05)."""
    old_policy_ema: float = Field(0.05, gt=0, le=1)
    """EMA rate of the old policy the chains are sampled from, after every update (ours: 0.05; 1 = a copy)."""
    ppo_coef: float = Field(1.0, ge=0)
    """Weight of the PPO term (OGPO: 1). 0 leaves PPO out, so the policy learns by success BC alone: an ablation that
    tells what PPO adds (docs/results/ogpo_robosuite_lift.md)."""
    ppo_start_updates: int = Field(0, ge=0)
    """Updates before the PPO term starts (ours; 0 = OGPO). Until then the critic learns from the online data and the
    policy moves by success BC only: a critic warm-up like DPPO's and ReinFlow's, because PPO on a fresh critic
    follows its errors. On robosuite Lift with a dense reward 1000 let PPO alone improve every seed, and 0 did not
    (docs/results/ogpo_robosuite_lift_dense.md)."""
    conservative_advantage: bool = True
    """Use an advantage only where every critic head agrees on its sign (the smallest in magnitude), else 0."""
    success_bc: bool = True
    """Flow-matching loss on transitions of successful episodes (the ``success`` replay table)."""
    success_bc_coef: float = Field(1.0, ge=0)
    """Weight of the success-buffer BC loss (OGPO: 1.0)."""
    success_batch_size: int = Field(256, ge=1)
    """Chunks per success-BC batch (sampled from table ``success`` while it holds any)."""
    success_capacity: int = Field(200_000, ge=1)
    """Chunks table ``success`` keeps (the oldest are evicted beyond it)."""
    chi2: bool = False
    """Chi-squared regulariser: penalise ``(pi_theta / pi_ref - 1)**2`` on the sampled chains, ``pi_ref`` a slow EMA.
    In an offline probe on WidowX lift it drove the policy away instead (docs/results/ogpo_lift.md): off by default."""
    chi2_coef: float = Field(0.1, ge=0)
    """Weight of the chi-squared regulariser (ours: 0.1)."""
    chi2_reference_ema: float = Field(0.001, gt=0, le=1)
    """EMA rate of the chi-squared reference policy (ours: 0.001)."""

    @model_validator(mode="after")
    def _widths(self) -> OGPOConfig:
        if any(h < 1 for h in self.critic_hidden_dims):
            raise ValueError("critic_hidden_dims must all be >= 1")
        if self.chains_per_state % self.chains_per_noise:
            raise ValueError(f"chains_per_noise ({self.chains_per_noise}) must divide chains_per_state "
                             f"({self.chains_per_state})")
        return self
