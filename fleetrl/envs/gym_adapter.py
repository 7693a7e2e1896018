"""Any gymnasium env with a Box action space, adapted to fleetrl's conventions.

- Observations are a dict of arrays (a plain Box observation becomes ``{"state": obs}`` as float32).
- Actions are a [-1, 1] Box; the adapter rescales affinely to the env's bounds, so the stored action is exactly the
  executed one up to that fixed map.
- ``info["success"]`` is set on every step according to :attr:`EnvConfig.success`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fleetrl.config import EnvConfig
from fleetrl.types import TransitionSpec


class FleetEnv(gym.Wrapper):
    """Dict observations, [-1, 1] actions, ``info["success"]``."""

    def __init__(self, env: gym.Env, success: str = "info"):
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"env {env.spec.id if env.spec else env}: action space must be a Box, "
                             f"got {type(env.action_space).__name__}")
        low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("env action space must be bounded to be rescaled to [-1, 1]")
        self._low, self._high = low, high
        self._success_rule = success
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=env.action_space.shape, dtype=np.float32)
        inner = env.observation_space
        if isinstance(inner, gym.spaces.Dict):
            self._wrap_obs = False
            self.observation_space = inner
        else:
            self._wrap_obs = True
            self.observation_space = gym.spaces.Dict(
                {"state": gym.spaces.Box(-np.inf, np.inf, shape=inner.shape, dtype=np.float32)})

    def _obs(self, obs: Any) -> dict[str, np.ndarray]:
        if self._wrap_obs:
            return {"state": np.asarray(obs, dtype=np.float32)}
        return {k: np.asarray(v) for k, v in obs.items()}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        info["success"] = False
        return self._obs(obs), info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        executed = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        obs, reward, terminated, truncated, info = self.env.step(executed.astype(self.env.action_space.dtype))
        info = dict(info)
        if self._success_rule == "survive":
            info["success"] = bool(truncated and not terminated)
        else:
            info["success"] = bool(info.get("success", info.get("is_success", False)))
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), info


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> FleetEnv:
    """Build the configured env; an unknown id raises naming ``env.id``."""
    try:
        limit = {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
        env = gym.make(cfg.id, render_mode=render_mode, **limit, **cfg.kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"env.id: cannot make {cfg.id!r}: {exc}") from exc
    return FleetEnv(env, success=cfg.success)


def transition_spec(cfg: EnvConfig) -> TransitionSpec:
    """The run's transition schema, read off the configured env's spaces (raises naming ``env.id``)."""
    env = make_env(cfg)
    try:
        return TransitionSpec.from_spaces(env.observation_space, env.action_space)
    finally:
        env.close()
