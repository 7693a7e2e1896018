"""Flow-matching policies over action chunks: the velocity field, flow BC, sampling, and chain likelihoods.

Rectified flow (arXiv 2209.03003) on a flattened chunk of ``H`` actions, ``D = H·A``: noise ``x_0 ~ N(0, I)`` at
``t = 0``, data ``x_1`` at ``t = 1``, ``x_t = t·x_1 + (1 - t)·x_0``, and the velocity field ``v(s, x_t, t)`` learns
``x_1 - x_0``. Acting integrates ``dx/dt = v`` with ``K`` Euler steps.

For policy gradients OGPO (arXiv 2605.03065) turns the ``K`` Euler steps into a stochastic chain with a tractable
likelihood: at ``t = k/K`` the next point is Gaussian around ``x + (v + σ_t²/2 · score)·dt`` with std
``σ_t = noise_scale·√(1 - t)``, where ``score = (t·v - x)/(1 - t)`` is the score of ``x_t`` implied by the
velocity (``E[x_0 | x_t] = x_t - t·v``). The score correction keeps the chain's marginals close to the flow's;
the taper makes the last steps nearly deterministic. Pure PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fleetrl.learners.networks import MLP

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowVelocity(nn.Module):
    """``v(s, x_t, t)``: an MLP on the observation features, the noisy chunk and sinusoidal features of ``t``."""

    def __init__(self, obs_dim: int, chunk_dim: int, hidden_dims: Sequence[int], time_features: int = 32,
                 layer_norm: bool = True) -> None:
        super().__init__()
        self.chunk_dim = chunk_dim
        # Geometric frequencies from 1 to 1000 (the transformer / diffusion time embedding).
        half = time_features // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), half)), persistent=False)
        self.net = MLP(obs_dim + chunk_dim + time_features, hidden_dims, chunk_dim, layer_norm=layer_norm)

    def forward(self, obs_feat: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``obs_feat [N, F]``, ``x [N, D]``, ``t [N]`` in [0, 1] -> velocity ``[N, D]``."""
        angles = t.to(x.dtype).unsqueeze(-1) * self.freqs
        return self.net(torch.cat([obs_feat, x, angles.sin(), angles.cos()], dim=-1))


def flow_matching_loss(velocity: FlowVelocity, obs_feat: Tensor, chunk: Tensor,
                       generator: torch.Generator | None = None,
                       step_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow BC: ``|v(s, x_t, t) - (x_1 - x_0)|²`` averaged over batch and dimensions, ``t ~ U[0, 1]``.

    ``chunk [B, H, A]`` or ``[B, D]`` are the data chunks ``x_1``. ``step_mask [B, H]`` (a chunk batch's
    ``discount``) leaves out the padding past an episode's end: those actions are never executed."""
    x1 = chunk.reshape(chunk.shape[0], -1).to(obs_feat.dtype)
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
    xt = t.unsqueeze(-1) * x1 + (1.0 - t.unsqueeze(-1)) * x0
    err = (velocity(obs_feat, xt, t) - (x1 - x0)).square()
    if step_mask is None:
        loss = err.mean()
    else:
        weight = step_mask.to(err.dtype).repeat_interleave(x1.shape[1] // step_mask.shape[1], dim=1)
        loss = (err * weight).sum() / weight.sum().clamp_min(1.0)
    return loss, {"flow_bc_loss": loss.detach()}


@torch.no_grad()
def euler_sample(velocity: FlowVelocity, obs_feat: Tensor, steps: int, noise: Tensor) -> Tensor:
    """The deterministic flow: ``K`` Euler steps of ``dx/dt = v`` from ``noise [N, D]``; returns ``x_1 [N, D]``
    (unclipped)."""
    x, dt = noise, 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, device=x.device, dtype=x.dtype)
        x = x + velocity(obs_feat, x, t) * dt
    return x


def chain_sigmas(steps: int, noise_scale: float) -> list[float]:
    """Step std ``σ_t = noise_scale·√(1 - t)`` at ``t = k/K``, ``k = 0..K-1``."""
    return [noise_scale * math.sqrt(1.0 - k / steps) for k in range(steps)]


def _step_means(velocity: FlowVelocity, obs_feat: Tensor, x: Tensor, t: Tensor, sigma: Tensor,
                dt: float) -> Tensor:
    """Mean of the next chain point: ``x + (v + σ²/2 · (t·v - x)/(1 - t))·dt``; shapes ``[N, D]``, ``t, σ [N]``."""
    v = velocity(obs_feat, x, t)
    tt, s2 = t.unsqueeze(-1), sigma.square().unsqueeze(-1)
    return x + (v + 0.5 * s2 * (tt * v - x) / (1.0 - tt)) * dt


@torch.no_grad()
def sample_chain(velocity: FlowVelocity, obs_feat: Tensor, steps: int, noise_scale: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """One stochastic denoising chain per row of ``obs_feat [N, F]``: ``[N, K + 1, D]``, ``x_0`` noise, ``x_K`` the
    (unclipped) chunk. No gradient: OGPO never backpropagates through the chain."""
    return sample_chain_with_log_prob(velocity, obs_feat, steps, noise_scale, generator)[0]


@torch.no_grad()
def sample_chain_with_log_prob(velocity: FlowVelocity, obs_feat: Tensor, steps: int, noise_scale: float,
                               generator: torch.Generator | None = None,
                               noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`sample_chain` and the chains' :func:`chain_log_prob` under the sampling ``velocity``, ``[N]``.
    ``noise [N, D]``: the chains' starting points ``x_0`` (default: fresh draws from N(0, I)).

    Each step's log-density is that of the standard normal draw ``z`` that made it, so the sampler's own
    likelihood costs no second pass of the K velocity evaluations (OGPO's old-policy log-prob: a fifth of an
    update's network passes)."""
    n, d = obs_feat.shape[0], velocity.chunk_dim
    x = (torch.randn((n, d), generator=generator, device=obs_feat.device, dtype=obs_feat.dtype) if noise is None
         else noise.to(obs_feat.dtype))
    points, dt = [x], 1.0 / steps
    log_p = torch.zeros(n, device=x.device, dtype=x.dtype)
    for k, sigma in enumerate(chain_sigmas(steps, noise_scale)):
        t = torch.full((n,), k * dt, device=x.device, dtype=x.dtype)
        mean = _step_means(velocity, obs_feat, x, t, torch.full_like(t, sigma), dt)
        z = torch.randn(mean.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + sigma * z
        # As chain_log_prob computes it from the stored point: z = (x - mean) / sigma, in the same float rounding.
        z = (x - mean) / sigma
        log_p += (-0.5 * z.square()).sum(-1) - d * (math.log(sigma) + _HALF_LOG_2PI)
        points.append(x)
    return torch.stack(points, dim=1), log_p / (steps * d)


def chain_log_prob(velocity: FlowVelocity, obs_feat: Tensor, chain: Tensor, noise_scale: float) -> Tensor:
    """Log-likelihood of each chain under ``velocity``, normalised by ``K`` and by ``D`` (OGPO): ``[N]``.

    ``chain [N, K + 1, D]`` is treated as data (no gradient flows into it); the gradient reaches ``velocity`` (and
    ``obs_feat``) through the step means only. All K steps run as one batched forward pass. The prior density of
    ``x_0`` is left out: it is the same under every policy and cancels in ratios."""
    n, k1, d = chain.shape
    steps, dt = k1 - 1, 1.0 / (k1 - 1)
    chain = chain.detach()
    x = chain[:, :-1].reshape(n * steps, d)
    t = (torch.arange(steps, device=chain.device, dtype=chain.dtype) * dt).repeat(n)
    sigma = torch.tensor(chain_sigmas(steps, noise_scale), device=chain.device, dtype=chain.dtype).repeat(n)
    feat = obs_feat.repeat_interleave(steps, dim=0)
    mean = _step_means(velocity, feat, x, t, sigma, dt)
    z = (chain[:, 1:].reshape(n * steps, d) - mean) / sigma.unsqueeze(-1)
    log_p = -0.5 * z.square() - sigma.log().unsqueeze(-1) - _HALF_LOG_2PI
    return log_p.reshape(n, steps * d).sum(-1) / (steps * d)
