"""A baseline Cal-QL update with the computational structure of the public PyTorch single-file implementation.

Written for the benchmark (not copied): it does the same arithmetic as :class:`fleetrl.learners.calql.CalQL` on the
same config, organised the way the public PyTorch Cal-QL (CORL, ``algorithms/finetune/cal_ql.py``) organises it, so
the timing difference is the structure, not the maths:

- two separate critic modules with one Adam optimiser each (fleetrl: one batched ensemble, one optimiser);
- a ``torch.distributions`` tanh-Gaussian actor (``TransformedDistribution`` + ``TanhTransform``), called once per
  action set: pi(s) for the actor loss, pi(s') repeated for the backup, pi(s) and pi(s') repeated for the
  regulariser (fleetrl: a closed-form sampler, and one critic pass over all 3N regulariser actions);
- seven critic calls at ``s`` and two target calls at ``s'`` per update;
- the actor loss back-propagates through the live critics (their gradients are zeroed before the critic step);
- about 25 ``.item()`` metric reads per update (fleetrl: detached tensors, synced only when logged);
- the target update as a Python loop over parameters.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from fleetrl.config import CQLConfig
from fleetrl.types import TransitionBatch


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class _Critic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = _mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        if act.ndim == 3:  # [B, N, A]: repeat the observation per action
            b, n = act.shape[:2]
            q = self.net(torch.cat([obs.unsqueeze(1).expand(b, n, obs.shape[-1]), act], -1))
            return q.squeeze(-1)
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class _Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = _mlp(obs_dim, hidden, 2 * act_dim)

    def forward(self, obs: Tensor, repeat: int | None = None) -> tuple[Tensor, Tensor]:
        if repeat is not None:
            obs = obs.unsqueeze(1).expand(obs.shape[0], repeat, obs.shape[-1])
        mean, log_std = self.net(obs).chunk(2, -1)
        dist = TransformedDistribution(Normal(mean, log_std.clamp(-20, 2).exp()), TanhTransform(cache_size=1))
        action = dist.rsample()
        return action, dist.log_prob(action).sum(-1)


class BaselineCalQL:
    """One Cal-QL update per :meth:`update`, structured as described in the module docstring."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: CQLConfig, device: str = "cpu") -> None:
        self.cfg, self.act_dim = cfg, act_dim
        h = tuple(cfg.hidden_dims)
        self.critic_1, self.critic_2 = _Critic(obs_dim, act_dim, h).to(device), _Critic(obs_dim, act_dim, h).to(device)
        self.target_1, self.target_2 = copy.deepcopy(self.critic_1), copy.deepcopy(self.critic_2)
        self.actor = _Actor(obs_dim, act_dim, h).to(device)
        self.opt_1 = torch.optim.Adam(self.critic_1.parameters(), cfg.critic_lr)
        self.opt_2 = torch.optim.Adam(self.critic_2.parameters(), cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), cfg.actor_lr)
        self.log_alpha = nn.Parameter(torch.zeros((), device=device))
        self.alpha_opt = torch.optim.Adam([self.log_alpha], cfg.alpha_lr)

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.num_actions
        obs, next_obs, act = batch.obs["state"], batch.next_obs["state"], batch.action
        new_act, log_pi = self.actor(obs)
        alpha_loss = -(self.log_alpha * (log_pi - self.act_dim).detach()).mean()
        alpha = self.log_alpha.exp()
        policy_loss = (alpha * log_pi - torch.min(self.critic_1(obs, new_act), self.critic_2(obs, new_act))).mean()
        log = {"log_pi": log_pi.mean().item(), "policy_loss": policy_loss.item(), "alpha": alpha.item()}

        q1, q2 = self.critic_1(obs, act), self.critic_2(obs, act)
        with torch.no_grad():
            next_a, _ = self.actor(next_obs, repeat=n)
            target = torch.min(self.target_1(next_obs, next_a), self.target_2(next_obs, next_a)).max(-1).values
            y = batch.reward + cfg.gamma * batch.discount * target
        qf1_loss, qf2_loss = F.mse_loss(q1, y), F.mse_loss(q2, y)
        rand = act.new_empty((act.shape[0], n, self.act_dim)).uniform_(-1, 1)
        cur_a, cur_lp = (t.detach() for t in self.actor(obs, repeat=n))
        nxt_a, nxt_lp = (t.detach() for t in self.actor(next_obs, repeat=n))
        values = {}
        for name, critic in (("1", self.critic_1), ("2", self.critic_2)):
            q_rand, q_cur, q_next = critic(obs, rand), critic(obs, cur_a), critic(obs, nxt_a)
            bound = batch.mc_return.reshape(-1, 1).expand_as(q_cur)
            log[f"bound_rate_cur_{name}"] = (q_cur < bound).float().mean().item()
            log[f"bound_rate_next_{name}"] = (q_next < bound).float().mean().item()
            q_cur, q_next = torch.maximum(q_cur, bound), torch.maximum(q_next, bound)
            cat = torch.cat([q_rand - math.log(0.5 ** self.act_dim), q_next - nxt_lp, q_cur - cur_lp], 1)
            values[name] = torch.logsumexp(cat / cfg.temperature, 1) * cfg.temperature
            log[f"q_rand_{name}"], log[f"q_cur_{name}"] = q_rand.mean().item(), q_cur.mean().item()
            log[f"q_next_{name}"] = q_next.mean().item()
        diff_1, diff_2 = (values["1"] - q1).mean(), (values["2"] - q2).mean()
        qf_loss = qf1_loss + qf2_loss + cfg.alpha * (diff_1 + diff_2)
        log.update(qf1_loss=qf1_loss.item(), qf2_loss=qf2_loss.item(), diff_1=diff_1.item(), diff_2=diff_2.item(),
                   average_q1=q1.mean().item(), average_q2=q2.mean().item(), target=target.mean().item())

        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.opt_1.zero_grad()
        self.opt_2.zero_grad()
        qf_loss.backward()
        self.opt_1.step()
        self.opt_2.step()
        with torch.no_grad():
            for target_net, net in ((self.target_1, self.critic_1), (self.target_2, self.critic_2)):
                for tp, p in zip(target_net.parameters(), net.parameters(), strict=True):
                    tp.copy_((1 - cfg.tau) * tp + cfg.tau * p)
        return log
