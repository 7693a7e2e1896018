"""The flow policy as a module (observation encoder + velocity field) and as the :class:`Policy` actors run.

:class:`FlowActor` is what learners train (flow BC, OGPO) and what the weights describe. :class:`FlowChunkPolicy`
ships to actors and robots: it denoises a chunk of ``H`` actions with ``K`` Euler steps, then hands them out one
env step at a time; a new chunk is sampled when the last one is used up or the episode restarts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from fleetrl.config import EncoderConfig, FlowConfig
from fleetrl.core import Weights
from fleetrl.learners.flow import FlowVelocity, euler_sample
from fleetrl.learners.image_obs import build_image_encoder
from fleetrl.learners.networks import obs_vector
from fleetrl.learners.policy import policy_obs_dim, policy_obs_keys
from fleetrl.types import TransitionSpec


class FlowActor(nn.Module):
    """State vector (standardised), plus image features on the image path, feeding a :class:`FlowVelocity` over
    chunks of ``cfg.horizon`` actions of ``spec.action``."""

    def __init__(self, spec: TransitionSpec, cfg: FlowConfig, encoder: EncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_keys = policy_obs_keys(spec)
        obs_dim = policy_obs_dim(spec)
        self.action_dim = math.prod(spec.action.shape)
        self.chunk_dim = cfg.horizon * self.action_dim
        self.encoder = build_image_encoder(spec, encoder or EncoderConfig())
        feat = self.encoder.out_dim if self.encoder is not None else 0
        self.velocity = FlowVelocity(obs_dim + feat, self.chunk_dim, cfg.hidden_dims, cfg.time_features,
                                     cfg.layer_norm)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def features(self, obs: Mapping[str, Tensor], augment: bool = False,
                 generator: torch.Generator | None = None) -> Tensor:
        """``[B, F]``: the standardised state vector, then image features (random-shifted if ``augment``)."""
        state = (obs_vector(obs, self.obs_keys) - self.obs_mean) / self.obs_std
        if self.encoder is None:
            return state
        return torch.cat([state, self.encoder(obs, augment=augment, generator=generator)], dim=-1)

    @torch.no_grad()
    def sample_chunks(self, obs: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """Chunks ``[B, H, A]`` clipped to ``[-1, 1]`` (what actors execute) from ``noise [B, H·A]``."""
        x = euler_sample(self.velocity, self.features(obs), self.cfg.denoise_steps, noise)
        return x.clamp(-1.0, 1.0).reshape(x.shape[0], self.cfg.horizon, self.action_dim)


class FlowChunkPolicy:
    """Implements :class:`fleetrl.core.Policy`: one chunk per ``H`` env steps, on CPU.

    ``deterministic`` starts the flow from zero noise (the mode-like chunk) instead of ``N(0, I)``."""

    def __init__(self, spec: TransitionSpec, cfg: FlowConfig, encoder: EncoderConfig | None = None,
                 seed: int | None = None) -> None:
        self.spec = spec
        self.actor = FlowActor(spec, cfg, encoder).eval().requires_grad_(False)
        self._generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self._queue: list[np.ndarray] = []

    def __deepcopy__(self, memo: dict) -> FlowChunkPolicy:
        """Copies share the noise generator (the weight subscriber copies its template for every new version, and
        the noise stream should continue, not restart) and start with no chunk in hand."""
        memo[id(self._generator)] = self._generator
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, [] if key == "_queue" else copy.deepcopy(value, memo))
        return new

    def reset(self) -> None:
        """Drop the rest of the current chunk (a new episode, or a person took over)."""
        self._queue = []

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        if not self._queue:
            batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items() if k in self.spec.obs}
            if deterministic:
                noise = torch.zeros(1, self.actor.chunk_dim)
            else:
                noise = torch.randn((1, self.actor.chunk_dim), generator=self._generator)
            chunk = self.actor.sample_chunks(batch, noise)[0].numpy()
            self._queue = [a.reshape(self.spec.action.shape) for a in chunk]
        return self._queue.pop(0).astype(np.float32)

    def load_weights(self, weights: Weights) -> None:
        """Load :meth:`OGPO.policy_weights` (or flow BC's); the current chunk is finished with the old weights."""
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}
        self.actor.load_state_dict(state)


def flow_actor_weights(actor: FlowActor) -> Weights:
    """The shipped weights of ``actor``: fresh CPU numpy copies of its ``state_dict``."""
    return {k: v.detach().to("cpu", copy=True).numpy() for k, v in actor.state_dict().items()}
