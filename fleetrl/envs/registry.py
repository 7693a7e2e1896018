"""fleetrl's gymnasium ids: the simulated WidowX tabletop tasks and the robosuite adapter.

Importing :mod:`fleetrl.envs` registers them, so ``import fleetrl.envs; gymnasium.make("fleetrl/WidowXLift-v0")``
works in any gymnasium program (as does ``gymnasium.make("fleetrl.envs:fleetrl/WidowXLift-v0")`` without the
import). Keyword arguments go through ``gymnasium.make``, e.g. ``image=True, image_size=128, reward_type="dense"``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fleetrl.envs.robosuite_env import register_robosuite_envs
from fleetrl.envs.widowx.tasks import TASKS

#: WidowX task name -> gymnasium id.
WIDOWX_IDS: dict[str, str] = {
    "reach": "fleetrl/WidowXReach-v0",
    "lift": "fleetrl/WidowXLift-v0",
    "put_on_plate": "fleetrl/WidowXPutOnPlate-v0",
    "push": "fleetrl/WidowXPush-v0",
    "stack": "fleetrl/WidowXStack-v0",
}


def register_envs() -> list[str]:
    """Register every fleetrl env (idempotent); returns their ids."""
    for task, env_id in WIDOWX_IDS.items():
        if env_id not in gym.registry:
            # The time limit is the task's Bridge-like episode length; reaching it is a truncation.
            gym.register(env_id, entry_point="fleetrl.envs.widowx.env:WidowXEnv", kwargs={"task": task},
                         max_episode_steps=TASKS[task].episode_steps)
    return [*WIDOWX_IDS.values(), *register_robosuite_envs()]


def fleet_env_ids() -> list[str]:
    return register_envs()


def _space_text(space: gym.Space) -> str:
    """Compact: ``state float32(7)  joints float32(6)`` for a Dict; ``[-1, 1] float32(7)`` for a bounded Box."""
    if isinstance(space, gym.spaces.Dict):
        return "  ".join(f"{k} {_space_text(v)}" for k, v in space.spaces.items())
    if isinstance(space, gym.spaces.Box):
        shape = ",".join(str(n) for n in space.shape)
        bounds = ""
        if np.all(np.isfinite(space.low)) and space.low.min() == space.low.max() == -space.high.max():
            bounds = f"[{space.low.min():g}, {space.high.max():g}] "
        return f"{bounds}{space.dtype}({shape})"
    return str(space)


def describe_env(env_id: str, **kwargs: Any) -> dict[str, Any]:
    """Spaces and time limit of a registered env, read off an instance (built with ``kwargs``)."""
    env = gym.make(env_id, **kwargs)
    try:
        spec = gym.spec(env_id)
        base = env.unwrapped
        return {"id": env_id, "observation_space": _space_text(env.observation_space),
                "action_space": _space_text(env.action_space), "max_episode_steps": spec.max_episode_steps,
                "horizon": getattr(base, "horizon", None), "entry_point": str(spec.entry_point)}
    finally:
        env.close()
