"""Pure-PyTorch networks of the SAC learner: an MLP, a tanh-Gaussian actor and a vectorised critic ensemble.

Nothing here knows about replay, processes or configs; shapes are documented per function. Actions live in the
open box ``(-1, 1)^A`` (the env side rescales them to the action space's bounds).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def obs_vector(obs: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    """Concatenate ``obs[k]`` for ``k`` in ``keys`` (caller's order) into one float32 ``[B, D]`` tensor."""
    if not keys:
        raise ValueError("obs_vector needs at least one observation key")
    parts = [obs[k].reshape(obs[k].shape[0], -1).to(torch.float32) for k in keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class MLP(nn.Module):
    """``Linear -> [LayerNorm] -> ReLU`` per hidden width, then a final ``Linear`` to ``out_dim``."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, layer_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(prev, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(nn.ReLU())
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TanhGaussianActor(nn.Module):
    """Diagonal Gaussian over pre-squash actions ``u``; the action is ``tanh(u)`` (SAC, arXiv 1812.05905 App. C).

    ``log_std`` is hard-clamped to ``[LOG_STD_MIN, LOG_STD_MAX] = [-20, 2]`` (as in the SAC reference code); the
    clamp has zero gradient outside the range, which in practice is never reached with an entropy bonus.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.trunk = MLP(obs_dim, hidden_dims, 2 * action_dim)

    def forward(self, obs_vec: Tensor) -> tuple[Tensor, Tensor]:
        """``obs_vec [B, D]`` -> ``(mean [B, A], log_std [B, A])`` of the pre-squash Gaussian."""
        mean, log_std = self.trunk(obs_vec).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs_vec: Tensor, deterministic: bool = False,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised sample: ``(action [B, A] in (-1, 1), log_prob [B])``.

        ``deterministic`` returns ``tanh(mean)`` and the density at that point. ``generator`` draws the noise
        (None: the global torch RNG).
        """
        mean, log_std = self(obs_vec)
        if deterministic:
            eps = torch.zeros_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        gauss_log_prob = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2*(log 2 - u - softplus(-2u)): exact and stable for large |u|,
        # unlike log(1 - tanh^2 + eps) (SAC arXiv 1812.05905 eq. 26).
        log_det = (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), gauss_log_prob - log_det


class CriticEnsemble(nn.Module):
    """``E`` independent Q-networks ``Q_e(s, a)`` evaluated together with batched matmuls.

    Layer ``i`` of every member is one stacked weight ``[E, in, out]`` and bias ``[E, 1, out]``; the whole ensemble
    runs as one ``torch.baddbmm`` per layer, so ``E = 10`` (REDQ/RLPD) costs about as many kernel launches as one
    critic. Each member is initialised like ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)``), independently. With
    ``layer_norm`` each hidden layer is followed by a per-member LayerNorm (own scale and shift), as in RLPD
    (arXiv 2302.02948, Sec. 4).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], num_critics: int,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.num_critics = num_critics
        self.layer_norm = layer_norm
        self.batched: bool | None = None
        """None: per-member matmuls on CPU, one batched matmul per layer elsewhere; True/False force one path."""
        dims = [obs_dim + action_dim, *hidden_dims, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_scales = nn.ParameterList()
        self.ln_shifts = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1.0 / math.sqrt(fan_in)  # what nn.Linear's kaiming_uniform(a=sqrt(5)) amounts to
            self.weights.append(nn.Parameter(torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)))
        if layer_norm:
            for width in hidden_dims:
                self.ln_scales.append(nn.Parameter(torch.ones(num_critics, 1, width)))
                self.ln_shifts.append(nn.Parameter(torch.zeros(num_critics, 1, width)))

    def forward(self, obs_vec: Tensor, action: Tensor, members: Tensor | None = None,
                detach_params: bool = False) -> Tensor:
        """``obs_vec [B, D]``, ``action [B, A]`` -> ``Q [E', B]``.

        ``members`` (int64 indices) evaluates only those members (``E' = len(members)``; None = all). With
        ``detach_params`` the parameters are used detached, so gradients reach the inputs but never the critic
        (the actor loss needs dQ/da only).
        """
        x = torch.cat([obs_vec, action.to(obs_vec.dtype)], dim=-1)
        n = self.num_critics if members is None else members.numel()
        if (x.device.type == "cpu") if self.batched is None else not self.batched:
            # On CPU one addmm per member beats the batched matmul (bench_calql_learner: forward 30 % faster at
            # 2 x 7680 rows); on GPU the batched form saves kernel launches.
            index = range(n) if members is None else members.tolist()
            return torch.stack([self._member(x, e, detach_params) for e in index])
        h = x.unsqueeze(0).expand(n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            ln = (self.ln_scales[i], self.ln_shifts[i]) if self.layer_norm and i < last else None
            params = [w, b, *(ln or ())]
            if members is not None:
                params = [p.index_select(0, members) for p in params]
            if detach_params:
                params = [p.detach() for p in params]
            h = torch.baddbmm(params[1], h, params[0])
            if i < last:
                if ln is not None:
                    h = torch.addcmul(params[3], F.layer_norm(h, h.shape[-1:]), params[2])
                h = F.relu(h)
        return h.squeeze(-1)

    def _member(self, x: Tensor, e: int, detach_params: bool) -> Tensor:
        """Member ``e`` alone: ``x [B, D + A]`` -> ``Q [B]`` (the same arithmetic as the batched path)."""
        h, last = x, len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            params = [w[e], b[e]]
            if self.layer_norm and i < last:
                params += [self.ln_scales[i][e], self.ln_shifts[i][e]]
            if detach_params:
                params = [p.detach() for p in params]
            h = torch.addmm(params[1], h, params[0])
            if i < last:
                if len(params) == 4:
                    h = torch.addcmul(params[3], F.layer_norm(h, h.shape[-1:]), params[2])
                h = F.relu(h)
        return h.squeeze(-1)
