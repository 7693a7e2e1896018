"""A scripted expert for robosuite Lift, with the same noise knob as the WidowX experts (mixed-quality datasets).

It reads the :class:`~fleetrl.envs.robosuite_env.RobosuiteEnv` observation (``state``: grip-site x, y, z, roll,
pitch, yaw relative to gripper-down, opening; the privileged ``object`` vector, whose first three numbers are the
cube's position) and runs four phases: line up :data:`HOVER` above the cube with the gripper open, descend to it,
close for :data:`CLOSE_STEPS` steps, lift. Moves are proportional in the env's action units (1 = 5 cm per step);
the wrist is held pointing down. The Panda's open gripper spans 8 cm, so the cube's yaw needs no alignment.

Noise ``S`` degrades it as in :mod:`fleetrl.envs.widowx.experts`: Gaussian noise of standard deviation ``S`` on the
six motion dimensions (then clipped), and with probability ``S / 4`` per step the gripper command inverted for
that step. :data:`MIXED_NOISE` gives a mixed-quality dataset.
"""

from __future__ import annotations

import numpy as np

HOVER = 0.06
"""Height above the cube's centre at which the gripper lines up before descending (m)."""
GRASP_DEPTH = -0.005
"""Grip-site height relative to the cube's centre when closing (m): a little below it, for a firm grasp."""
CLOSE_STEPS = 8
"""Steps spent closing before lifting (robosuite moves the fingers 1/10 of their travel per step)."""
POS_SCALE = 0.05
"""Metres per unit of position action (robosuite's OSC_POSE output limit)."""
MIXED_NOISE = {"Lift": 0.5}
"""Noise that gives a mixed-quality dataset (roughly 30-60 % success; tests/test_robosuite_expert.py checks it)."""
OPEN, CLOSED = 1.0, -1.0


class RobosuiteLiftExpert:
    """``reset(seed)`` then ``act(obs)``; deterministic at ``noise=0``."""

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = noise
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._phase, self._held = "above", 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        action = self._expert_action(obs)
        if self.noise > 0:
            action[:6] = np.clip(action[:6] + self._rng.normal(0.0, self.noise, 6), -1.0, 1.0)
            if self._rng.random() < self.noise / 4:
                action[6] = -action[6]
        return action.astype(np.float32)

    def _expert_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state, cube = np.asarray(obs["state"], np.float64), np.asarray(obs["object"][:3], np.float64)
        eef = state[:3]
        grasp = cube + [0.0, 0.0, GRASP_DEPTH]
        if self._phase == "above":
            target, gripper = cube + [0.0, 0.0, HOVER], OPEN
            if np.linalg.norm(target[:2] - eef[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self._phase = "descend"
        if self._phase == "descend":
            target, gripper = grasp, OPEN
            if np.linalg.norm(grasp[:2] - eef[:2]) > 0.03:  # knocked off line: line up again
                self._phase = "above"
            elif abs(eef[2] - grasp[2]) < 0.01:
                self._phase = "close"
        if self._phase == "close":
            target, gripper = grasp, CLOSED
            self._held += 1
            if self._held >= CLOSE_STEPS:
                self._phase = "lift"
        if self._phase == "lift":
            target, gripper = np.array([cube[0], cube[1], eef[2] + POS_SCALE]), CLOSED
        action = np.zeros(7)
        action[:3] = np.clip((target - eef) / POS_SCALE, -1.0, 1.0)
        action[3:6] = -np.clip(state[3:6], -0.5, 0.5)  # back to pointing down (0.5 rad per unit)
        action[6] = gripper
        return action
