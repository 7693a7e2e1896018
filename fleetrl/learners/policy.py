"""The policy that ships to actors and robots: a CPU tanh-Gaussian actor (numpy path), or a CNN + actor for images."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fleetrl.config import EncoderConfig
from fleetrl.core import Weights
from fleetrl.learners.networks import LOG_STD_MAX, LOG_STD_MIN, TanhGaussianActor, obs_vector
from fleetrl.types import TransitionSpec


def policy_obs_keys(spec: TransitionSpec) -> list[str]:
    """Observation keys the actor reads: the floating-point (non-image) entries of ``spec.obs``, sorted.

    The learner and the shipped policy both call this, so they always agree on the input layout.
    """
    keys = sorted(k for k, s in spec.obs.items() if np.issubdtype(s.dtype, np.floating))
    if not keys:
        raise ValueError(f"no floating-point observation keys in the spec (have {sorted(spec.obs)})")
    return keys


def policy_obs_dim(spec: TransitionSpec) -> int:
    """Length of the concatenated, flattened actor input."""
    return sum(math.prod(spec.obs[k].shape) for k in policy_obs_keys(spec))


class GaussianPolicy:
    """Implements :class:`fleetrl.core.Policy` for one unbatched observation, on CPU.

    ``act`` runs the actor's MLP in numpy on views of the torch parameters: for one observation, per-op torch
    dispatch costs several times the arithmetic, and actors call ``act`` every env step (bench_actor_overhead).
    The torch module stays the source of truth; ``act_torch`` is the reference path the tests compare against.
    """

    def __init__(self, spec: TransitionSpec, hidden_dims: Sequence[int], seed: int | None = None) -> None:
        self.spec = spec
        self.obs_keys = policy_obs_keys(spec)
        self.actor = TanhGaussianActor(policy_obs_dim(spec), math.prod(spec.action.shape), hidden_dims).eval()
        self.actor.requires_grad_(False)
        # A private generator makes an actor's exploration reproducible without touching the global RNG.
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self._layers = self._numpy_layers()
        self._norm = _identity_norm(policy_obs_dim(spec))

    def __deepcopy__(self, memo: dict) -> GaussianPolicy:
        """Copies share the exploration RNG: a copy loaded with new weights continues the noise stream instead of
        restarting it (the weight subscriber copies its template for every new version)."""
        memo[id(self._rng)] = self._rng
        if self._generator is not None:
            memo[id(self._generator)] = self._generator
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        new._layers = new._numpy_layers()
        return new

    def _numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(W^T, b)`` numpy views of each Linear of the trunk (shared memory: ``load_weights`` updates them)."""
        layers = []
        for module in self.actor.trunk.net:
            if isinstance(module, torch.nn.Linear):
                layers.append((module.weight.detach().numpy().T, module.bias.detach().numpy()))
            elif not isinstance(module, torch.nn.ReLU):
                raise TypeError(f"GaussianPolicy's numpy path supports Linear/ReLU trunks, got {module}")
        return layers

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Action in ``(-1, 1)``, float32, shaped like ``spec.action``, for one observation without batch axis."""
        h = np.concatenate([np.asarray(obs[k], dtype=np.float32).ravel() for k in self.obs_keys])
        h = (h - self._norm[0]) / self._norm[1]
        last = len(self._layers) - 1
        for i, (w_t, b) in enumerate(self._layers):
            h = h @ w_t + b
            if i < last:
                np.maximum(h, 0.0, out=h)
        mean, log_std = np.split(h, 2)
        if not deterministic:
            log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
            mean = mean + np.exp(log_std) * self._rng.standard_normal(mean.shape, dtype=np.float32)
        return np.tanh(mean).astype(np.float32, copy=False).reshape(self.spec.action.shape)

    @torch.inference_mode()
    def act_torch(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """The same as :meth:`act` through the torch module (reference path)."""
        batch = {k: torch.as_tensor(np.asarray(obs[k], dtype=np.float32)).unsqueeze(0) for k in self.obs_keys}
        x = (obs_vector(batch, self.obs_keys) - torch.from_numpy(self._norm[0])) / torch.from_numpy(self._norm[1])
        action, _ = self.actor.sample(x, deterministic, self._generator)
        return action[0].numpy().astype(np.float32, copy=False).reshape(self.spec.action.shape)

    def load_weights(self, weights: Weights) -> None:
        """Copy published weights (names as in the actor's ``state_dict``) in; strict on names and shapes.

        Everything is validated before anything is copied, so a bad publish leaves the old weights intact.
        """
        own = self.actor.state_dict()
        weights, norm = _split_norm(weights, policy_obs_dim(self.spec))
        _check_weights(own, weights)
        self._norm = norm
        with torch.no_grad():
            for key, tensor in own.items():
                # Published arrays may be read-only views of Ray's object store: copy through numpy.
                # In place, so the numpy views in self._layers see the new values.
                np.copyto(tensor.numpy(), np.asarray(weights[key]), casting="same_kind")


class ImagePolicy:
    """Implements :class:`fleetrl.core.Policy` for observations with images: the actor's CNN, then its MLP.

    Runs through torch on CPU (the CNN dominates; numpy would gain nothing). Published weights are the actor's
    ``state_dict`` plus the encoder's under ``encoder.`` (what ``SAC.policy_weights`` sends). Images are never
    augmented here.
    """

    def __init__(self, spec: TransitionSpec, hidden_dims: Sequence[int], encoder_cfg: EncoderConfig,
                 seed: int | None = None) -> None:
        from fleetrl.learners.image_obs import build_image_encoder

        self.spec = spec
        self.obs_keys = policy_obs_keys(spec)
        encoder = build_image_encoder(spec, encoder_cfg)
        if encoder is None:
            raise ValueError("ImagePolicy: the spec has no image observations (use GaussianPolicy)")
        self.encoder = encoder.eval().requires_grad_(False)
        self.actor = TanhGaussianActor(policy_obs_dim(spec) + encoder.out_dim, math.prod(spec.action.shape),
                                       hidden_dims).eval().requires_grad_(False)
        self._generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        self._norm = _identity_norm(policy_obs_dim(spec))

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.actor.state_dict(), **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}}

    @torch.inference_mode()
    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Action in ``(-1, 1)`` for one observation without batch axis."""
        batch = {k: torch.as_tensor(np.asarray(obs[k])).unsqueeze(0) for k in (*self.obs_keys, *self.encoder.keys)}
        state = (obs_vector(batch, self.obs_keys) - torch.from_numpy(self._norm[0])) / torch.from_numpy(self._norm[1])
        x = torch.cat([state, self.encoder(batch, augment=False)], dim=-1)
        action, _ = self.actor.sample(x, deterministic, self._generator)
        return action[0].numpy().astype(np.float32, copy=False).reshape(self.spec.action.shape)

    def load_weights(self, weights: Weights) -> None:
        """Strict on names and shapes; validated before anything is copied."""
        own = self._state_dict()
        weights, norm = _split_norm(weights, policy_obs_dim(self.spec))
        _check_weights(own, weights)
        self._norm = norm
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(torch.as_tensor(np.array(weights[key])))


NORM_KEYS = ("obs_norm.mean", "obs_norm.std")


def _identity_norm(dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(dim, np.float32), np.ones(dim, np.float32)


def checked_obs_stats(mean: np.ndarray, std: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float32 arrays of shape ``(dim,)`` with ``std > 0`` (``learner.normalize_obs``); raises
    naming the expected shape otherwise."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (dim,) or std.shape != mean.shape or not (std > 0).all():
        raise ValueError(f"obs normalisation: need mean and std of shape ({dim},) with std > 0, got {mean.shape} and "
                         f"{std.shape}")
    return mean, std


def _split_norm(weights: Weights, dim: int) -> tuple[Weights, tuple[np.ndarray, np.ndarray]]:
    """Separate the state normalisation (``obs_norm.mean`` / ``obs_norm.std``; identity when absent, as in weights
    published before normalisation existed) from the network weights; validated like them."""
    rest = {k: v for k, v in weights.items() if k not in NORM_KEYS}
    if not any(k in weights for k in NORM_KEYS):
        return rest, _identity_norm(dim)
    for key in NORM_KEYS:
        if key not in weights or tuple(np.shape(weights[key])) != (dim,):
            raise ValueError(f"policy weights: {key!r} must be present with shape ({dim},)")
    mean, std = (np.array(weights[k], np.float32) for k in NORM_KEYS)
    if not (std > 0).all():
        raise ValueError("policy weights: 'obs_norm.std' must be > 0")
    return rest, (mean, std)


def _check_weights(own: Mapping[str, torch.Tensor], weights: Weights) -> None:
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing:
        raise ValueError(f"policy weights: missing key {missing[0]!r} (missing: {missing})")
    if extra:
        raise ValueError(f"policy weights: unexpected key {extra[0]!r} (extra: {extra})")
    for key, tensor in own.items():
        shape = tuple(np.shape(weights[key]))
        if shape != tuple(tensor.shape):
            raise ValueError(f"policy weights: {key!r} has shape {shape}, expected {tuple(tensor.shape)}")


def make_policy(spec: TransitionSpec, hidden_dims: Sequence[int], encoder_cfg: EncoderConfig | None = None,
                seed: int | None = None) -> GaussianPolicy | ImagePolicy:
    """The shipped policy for ``spec``: :class:`ImagePolicy` when it has image observations, else
    :class:`GaussianPolicy`. The learner, the actors and evaluation all build it here."""
    from fleetrl.learners.image_obs import image_obs_keys

    if image_obs_keys(spec):
        return ImagePolicy(spec, hidden_dims, encoder_cfg or EncoderConfig(), seed)
    return GaussianPolicy(spec, hidden_dims, seed)
