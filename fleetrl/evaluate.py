"""Deterministic evaluation of a checkpoint's policy, with an optional video of one episode."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from fleetrl.checkpoint import load_checkpoint
from fleetrl.config import config_from_dict
from fleetrl.core import reset_policy
from fleetrl.envs.gym_adapter import make_env
from fleetrl.types import TransitionSpec


def evaluate(checkpoint: str | os.PathLike, episodes: int = 10, seed: int = 12345,
             video: str | os.PathLike | None = None, fps: int = 30, stochastic: bool = False) -> dict[str, Any]:
    """Run the checkpoint's policy for ``episodes`` episodes; the first one is filmed if asked.

    Deterministic by default (the Gaussian's mean, the flow from zero noise); ``stochastic`` samples actions as the
    actors do while training (a flow policy from N(0, I) noise, the Gaussian from its distribution)."""
    from fleetrl.learners.builder import build_policy

    data = load_checkpoint(checkpoint)
    meta = data["meta"]
    cfg = config_from_dict(meta["config"])
    spec = TransitionSpec.from_dict(meta["spec"])
    policy = build_policy(spec, cfg.learner)
    policy.load_weights(data["policy"])
    if video is not None:
        # Headless rendering: EGL unless the user chose (osmesa works too); PyOpenGL must agree with MuJoCo.
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    env = make_env(cfg.env, render_mode="rgb_array" if video is not None else None)
    returns, successes, lengths, frames = [], [], [], []
    try:
        for ep in range(episodes):
            obs, info = env.reset(seed=seed + ep)
            reset_policy(policy)
            done, ret, n = False, 0.0, 0
            while not done:
                if video is not None and ep == 0:
                    frames.append(env.render())
                obs, reward, terminated, truncated, info = env.step(policy.act(obs, deterministic=not stochastic))
                ret += reward
                n += 1
                done = terminated or truncated
            returns.append(ret)
            successes.append(bool(info.get("success", False)))
            lengths.append(n)
    finally:
        env.close()
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "learner_steps": meta["learner_steps"], "episodes": episodes,
        "stochastic": stochastic,
        "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
        "success_rate": float(np.mean(successes)), "length_mean": float(np.mean(lengths)), "returns": returns}
    if video is not None:
        import imageio.v2 as imageio

        path = pathlib.Path(video)
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(path, frames, fps=fps) if path.suffix == ".gif" else imageio.mimwrite(path, frames, fps=fps)
        result["video"] = str(path)
    return result
