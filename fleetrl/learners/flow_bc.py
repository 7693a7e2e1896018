"""Flow BC: behaviour cloning of the flow policy over action chunks (``learner.algorithm: flow-bc``).

``fleetrl pretrain`` runs it on the offline table; ``fleetrl train --init-from`` then fine-tunes the result with
OGPO. One update is one Adam step on the flow-matching loss of a chunk batch (padding past an episode's end left
out). Pure PyTorch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fleetrl.config import EncoderConfig, FlowConfig
from fleetrl.core import Weights
from fleetrl.datasets import Episode
from fleetrl.learners.flow import flow_matching_loss
from fleetrl.learners.flow_policy import FlowActor, flow_actor_weights
from fleetrl.learners.policy import checked_obs_stats
from fleetrl.types import TransitionBatch, TransitionSpec


class FlowBC:
    """Implements :class:`fleetrl.core.Algorithm`; its state initialises :class:`~fleetrl.learners.ogpo.OGPO`."""

    kind = "flow-bc"

    def __init__(self, spec: TransitionSpec, flow: FlowConfig, device: str | torch.device = "cpu", seed: int = 0,
                 encoder: EncoderConfig | None = None) -> None:
        self.spec, self.cfg, self.device = spec, flow, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = FlowActor(spec, flow, encoder).to(self.device)
        self.optim = torch.optim.Adam(self.actor.parameters(), lr=flow.bc_lr)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def set_obs_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise the state vector with these statistics (shipped with the weights)."""
        set_actor_obs_normalization(self.actor, mean, std)

    def update(self, batch: TransitionBatch) -> dict[str, Tensor]:
        chunk_mask = batch.discount if batch.discount.dim() == 2 else None
        feat = self.actor.features(batch.obs, augment=True, generator=self.generator)
        loss, metrics = flow_matching_loss(self.actor.velocity, feat, batch.action, self.generator, chunk_mask)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return metrics

    def policy_weights(self) -> Weights:
        return flow_actor_weights(self.actor)

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"kind": self.kind, "actor": self.actor.state_dict(), "optim": self.optim.state_dict(),
                              "generator": self.generator.get_state()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"algorithm state: not a flow-bc state (kind {state.get('kind')!r})")
        state = copy.deepcopy(state)
        self.actor.load_state_dict(state["actor"])
        self.optim.load_state_dict(state["optim"])
        self.generator.set_state(state["generator"].cpu())


def set_actor_obs_normalization(actor: FlowActor, mean: np.ndarray, std: np.ndarray) -> None:
    """Set ``actor``'s state standardisation; raises naming the expected shape."""
    mean, std = checked_obs_stats(mean, std, actor.obs_mean.numel())
    with torch.no_grad():
        actor.obs_mean.copy_(torch.as_tensor(mean))
        actor.obs_std.copy_(torch.as_tensor(std))


def episode_chunks(episodes: Iterable[Episode], spec: TransitionSpec, horizon: int) -> tuple[TransitionBatch, Tensor]:
    """Every (state, next ``horizon`` actions) of ``episodes`` as one chunk batch, laid out as the replay's chunk
    items are (padding past an episode's end zero in ``action`` / ``reward`` and 0 in ``discount``, ``next_obs``
    the observation after the chunk), and a bool per row: from a successful episode. For offline tools and tests;
    the learner samples its chunks from Reverb."""
    obs: dict[str, list] = {k: [] for k in spec.obs}
    nxt: dict[str, list] = {k: [] for k in spec.obs}
    actions, rewards, masks, terminated, success = [], [], [], [], []
    for ep in episodes:
        for t in range(ep.length):
            n = min(horizon, ep.length - t)
            chunk = np.zeros((horizon, *ep.actions.shape[1:]), np.float32)
            chunk[:n] = ep.actions[t:t + n]
            reward = np.zeros(horizon, np.float32)
            reward[:n] = ep.rewards[t:t + n]
            actions.append(chunk)
            rewards.append(reward)
            masks.append([1.0] * n + [0.0] * (horizon - n))
            terminated.append(bool(ep.terminated[t + n - 1]))
            success.append(bool(ep.is_success))
            for k in spec.obs:
                obs[k].append(ep.observations[k][t])
                nxt[k].append(ep.observations[k][t + n])
    b = len(actions)
    batch = TransitionBatch(
        obs={k: torch.as_tensor(np.stack(v)) for k, v in obs.items()}, action=torch.as_tensor(np.stack(actions)),
        reward=torch.as_tensor(np.stack(rewards)), discount=torch.as_tensor(np.array(masks, np.float32)),
        terminated=torch.as_tensor(terminated), truncated=torch.zeros(b, dtype=torch.bool),
        next_obs={k: torch.as_tensor(np.stack(v)) for k, v in nxt.items()}, mc_return=torch.zeros(b),
        is_intervention=torch.zeros(b, dtype=torch.bool), policy_version=torch.zeros(b, dtype=torch.int64),
        actor_id=torch.zeros(b, dtype=torch.int32), episode_id=torch.zeros(b, dtype=torch.int64))
    return batch, torch.as_tensor(success)
