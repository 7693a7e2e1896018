"""The one transition schema of fleetrl.

Actors append one :data:`STEP_FIELDS` row per env step; the replay layer stores each transition as a two-step window
over those rows, so the next observation is the following row's observation and is never stored twice. The learner
receives :class:`TransitionBatch`. Everything else (the Reverb signature, the torch batch) is derived from
:class:`TransitionSpec`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Scalar per-step fields and their dtypes, in the order they are stored.
SCALAR_FIELDS: dict[str, np.dtype] = {
    "reward": np.dtype(np.float32),
    # Environment discount: 0.0 when the step terminated the episode, else 1.0 (gamma is the learner's).
    "discount": np.dtype(np.float32),
    "terminated": np.dtype(np.bool_),
    "truncated": np.dtype(np.bool_),
    # Discounted return-to-go of (obs, action) within its episode, computed at episode end.
    "mc_return": np.dtype(np.float32),
    # True when a person, not the policy, chose the executed action.
    "is_intervention": np.dtype(np.bool_),
    # Version of the weights that chose the action (-1: random warm-up or a person).
    "policy_version": np.dtype(np.int64),
    "actor_id": np.dtype(np.int32),
    "episode_id": np.dtype(np.int64),
}

#: Every per-step field name: the observation dict, the executed action, then the scalars.
STEP_FIELDS: tuple[str, ...] = ("obs", "action", *SCALAR_FIELDS)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array (no batch dimension)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """Shapes and dtypes of one transition: an observation dict and a flat action."""

    obs: Mapping[str, ArraySpec]
    action: ArraySpec

    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any) -> TransitionSpec:
        """Derive the spec from gymnasium spaces (a Dict of Boxes, or one Box stored as ``state``)."""
        spaces = getattr(observation_space, "spaces", None)
        if spaces is None:
            spaces = {"state": observation_space}
        obs = {k: ArraySpec(tuple(s.shape), np.dtype(s.dtype)) for k, s in spaces.items()}
        # Actions are stored as float32 whatever the env's dtype.
        return cls(obs=obs, action=ArraySpec(tuple(action_space.shape), np.dtype(np.float32)))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints)."""
        return {"obs": {k: [list(s.shape), s.dtype.str] for k, s in self.obs.items()},
                "action": [list(self.action.shape), self.action.dtype.str]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransitionSpec:
        def arr(v: Any) -> ArraySpec:
            return ArraySpec(tuple(v[0]), np.dtype(v[1]))

        return cls(obs={k: arr(v) for k, v in data["obs"].items()}, action=arr(data["action"]))

    def step_specs(self) -> dict[str, Any]:
        """Spec tree of one appended step (``obs`` is a dict)."""
        tree: dict[str, Any] = {"obs": dict(self.obs), "action": self.action}
        tree.update({k: ArraySpec((), dt) for k, dt in SCALAR_FIELDS.items()})
        return tree

    def padding_step(self, obs: Mapping[str, np.ndarray], actor_id: int, episode_id: int) -> dict[str, Any]:
        """The row appended after an episode's last transition; only its ``obs`` (the final one) is ever read."""
        row = self.make_step(obs, self.action.zeros(), reward=0.0, terminated=False, truncated=False,
                             mc_return=0.0, is_intervention=False, policy_version=-1,
                             actor_id=actor_id, episode_id=episode_id)
        return row

    def make_step(self, obs: Mapping[str, np.ndarray], action: np.ndarray, *, reward: float, terminated: bool,
                  truncated: bool, mc_return: float, is_intervention: bool, policy_version: int, actor_id: int,
                  episode_id: int) -> dict[str, Any]:
        """One step row with every field cast to its schema dtype; raises naming the field on a shape mismatch."""
        row_obs = {}
        for key, spec in self.obs.items():
            if key not in obs:
                raise ValueError(f"observation is missing key {key!r} (schema has {sorted(self.obs)})")
            arr = np.asarray(obs[key], dtype=spec.dtype)
            if arr.shape != spec.shape:
                raise ValueError(f"obs[{key!r}]: shape {arr.shape} does not match the schema's {spec.shape}")
            row_obs[key] = arr
        act = np.asarray(action, dtype=self.action.dtype)
        if act.shape != self.action.shape:
            raise ValueError(f"action: shape {act.shape} does not match the schema's {self.action.shape}")
        values = dict(reward=reward, discount=0.0 if terminated else 1.0, terminated=terminated,
                      truncated=truncated, mc_return=mc_return, is_intervention=is_intervention,
                      policy_version=policy_version, actor_id=actor_id, episode_id=episode_id)
        row: dict[str, Any] = {"obs": row_obs, "action": act}
        row.update({k: np.asarray(values[k], dtype=dt) for k, dt in SCALAR_FIELDS.items()})
        return row


@dataclasses.dataclass
class TransitionBatch:
    """A batch of transitions as the learner sees it (torch tensors or numpy arrays, leading batch axis)."""

    obs: dict[str, Any]
    action: Any
    reward: Any
    discount: Any
    terminated: Any
    truncated: Any
    next_obs: dict[str, Any]
    mc_return: Any
    is_intervention: Any
    policy_version: Any
    actor_id: Any
    episode_id: Any

    def to(self, fn: Any) -> TransitionBatch:
        """Apply ``fn`` to every array (e.g. ``torch.as_tensor``)."""
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            fields[f.name] = {k: fn(x) for k, x in v.items()} if isinstance(v, dict) else fn(v)
        return TransitionBatch(**fields)


def monte_carlo_returns(rewards: np.ndarray, terminated_last: bool, gamma: float, reward_scale: float = 1.0,
                        reward_bias: float = 0.0, sparse_negative: float | None = None) -> np.ndarray:
    """Cal-QL's Monte-Carlo return-to-go of one finished episode, on the transformed rewards ``r * scale + bias``.

    - Sparse failure (``sparse_negative`` set and every transformed reward equals it): the episode never reached
      the goal, so it is treated as failing forever, ``G_t = r_neg / (1 - gamma)`` for every t (Cal-QL's rule).
    - Otherwise ``G_t = r_t + gamma * G_{t+1}``. Beyond a terminated episode's end G is 0 (an absorbing state).
      Beyond a time-limit truncation the episode would have gone on, so it is not 0 in general: with
      ``sparse_negative`` set the tail is ``r_neg / (1 - gamma)`` (the worst the task pays, so G stays a lower bound
      of the value, which is what the Cal-QL floor needs); without it the tail is 0, a lower bound only for
      non-negative rewards.
    """
    r = np.asarray(rewards, np.float64) * reward_scale + reward_bias
    if sparse_negative is not None and np.all(r == sparse_negative):
        return np.full(len(r), sparse_negative / (1.0 - gamma), np.float32)
    running = 0.0 if terminated_last or sparse_negative is None else sparse_negative / (1.0 - gamma)
    out = np.zeros(len(r), np.float32)
    for t in range(len(r) - 1, -1, -1):
        running = r[t] + gamma * running
        out[t] = running
    return out

