"""Scripted experts for the WidowX tabletop tasks, with a noise knob for mixed-quality datasets.

Each expert reads only the observation (``state`` and the privileged ``object`` vector, so envs must be made with
``privileged=True``) and runs a small waypoint machine: move above the object with the gripper turned to the
object's yaw, descend, close, lift, carry, lower, open, back off. Actions are proportional moves towards the
current waypoint, in the env's [-1, 1] action units.

Noise ``S`` (the ``--noise`` of ``fleetrl collect``) degrades the expert two ways, both drawn from the expert's own
seeded generator: Gaussian noise of standard deviation ``S`` added to the six motion dimensions (then clipped), and,
with probability ``S / 4`` per step, a fumble: the gripper command inverted for that step. At ``S = 0`` the expert
is deterministic. :data:`MIXED_NOISE` gives each task's noise for a mixed-quality dataset.
"""

from __future__ import annotations

import numpy as np

from fleetrl.envs.widowx.control import POS_SCALE, ROT_SCALE
from fleetrl.envs.widowx.scene import TABLE_Z
from fleetrl.envs.widowx.tasks import TASKS, Task

#: Noise giving a mixed-quality dataset (roughly 30-60 % success) per task, calibrated on seeds 0-39
#: (tests/test_widowx_experts.py checks it). Tasks differ: reaching is closed-loop throughout and shrugs off
#: noise that makes a carried block slip.
MIXED_NOISE = {"reach": 1.4, "lift": 0.23, "push": 0.23, "put_on_plate": 0.15, "stack": 0.11}
OPEN, CLOSED = 1.0, -1.0
HOVER = 0.07
"""Height above the object at which the gripper lines up before descending (m)."""
GAIN = 1.0
"""Proportional gain of position moves: 1 closes the remaining distance in one step (up to 5 cm)."""
YAW_GAIN = 0.6
"""Below 1: the wrist lags its target by a fraction of a step, and full-gain yaw corrections oscillate."""
PUSH_SPEED = 0.3
"""Largest push move per step in action units (1.5 cm): faster pushes fling the block."""


def _yaw_of(quat: np.ndarray, near: float) -> float:
    """Yaw of an upright block, as the quarter-turn equivalent (a block's grasp is symmetric under quarter turns)
    nearest to ``near``: folding into a fixed range would flip the target by 90 degrees when a block turned by
    about 45 degrees is nudged."""
    w, x, y, z = quat
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return float(near + (yaw - near + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Waypoint expert for one task. Call :meth:`reset` at each episode start, then :meth:`act` every step."""

    def __init__(self, task: str | Task, noise: float = 0.0, seed: int | None = None):
        self.task = TASKS[task]() if isinstance(task, str) else task
        if not 0.0 <= noise <= 2.0:
            raise ValueError(f"noise: must be in [0, 2], got {noise}")
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._phase, self._hold = 0, 0
        self._push_yaw = self._grasp_yaw = 0.0

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._phase, self._hold = 0, 0

    # --- reading the observation ------------------------------------------------------------------------------
    def _objects(self, obs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if "object" not in obs:
            raise ValueError("the scripted expert needs the privileged 'object' observation (privileged=True)")
        vec = np.asarray(obs["object"], np.float64)
        out, i = {}, 0
        for o in self.task.objects:
            out[o.name] = (vec[i:i + 3], vec[i + 3:i + 7])
            i += 7
        for m in self.task.markers:
            out[m.name] = (vec[i:i + 3], np.array([1.0, 0, 0, 0]))
            i += 3
        return out

    # --- acting -----------------------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        action = self._expert_action(obs)
        if self.noise > 0.0:
            action = action.copy()
            action[:6] += self.rng.normal(0.0, self.noise, 6)
            if self.rng.random() < self.noise / 4:  # a fumble: the gripper does the opposite this step
                action[6] = -action[6]
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _move(self, state: np.ndarray, target: np.ndarray, yaw: float, gripper: float) -> np.ndarray:
        a = np.zeros(7)
        a[:3] = GAIN * (target - state[:3]) / POS_SCALE
        a[3:5] = -state[3:5] / ROT_SCALE  # keep the gripper pointing down
        a[5] = YAW_GAIN * (yaw - state[5]) / ROT_SCALE
        a[6] = gripper
        return np.clip(a, -1.0, 1.0)

    def _expert_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], np.float64)
        objs = self._objects(obs)
        name = self.task.name
        if name == "reach":
            return self._move(state, objs["target"][0], 0.0, OPEN)
        if name == "push":
            return self._push(state, objs)
        obj, dest, dest_top = {
            "lift": ("block", None, None),
            "put_on_plate": ("block", "plate", 0.012),  # the plate's top is 1.2 cm above the table
            "stack": ("green", "yellow", 0.05),  # the yellow block is 5 cm tall
        }[name]
        return self._pick_place(state, objs, obj, dest, dest_top)

    def _advance_when(self, done: bool, hold: int = 0) -> None:
        """Go to the next phase once ``done`` has held for ``hold`` extra steps."""
        if done:
            self._hold += 1
            if self._hold > hold:
                self._phase, self._hold = self._phase + 1, 0
        else:
            self._hold = 0

    def _pick_place(self, state: np.ndarray, objs: dict, obj: str, dest: str | None,
                    dest_top: float | None) -> np.ndarray:
        pos, quat = objs[obj]
        if self._phase not in (1, 2):  # the wrist keeps still while going down and closing
            # Referenced to the wrist's yaw within +-0.78 so the target stays inside the +-1.57 yaw bounds.
            self._grasp_yaw = _yaw_of(quat, float(np.clip(state[5], -0.78, 0.78)))
        yaw = self._grasp_yaw
        half = self.task.objects[0].size[2]
        tcp = state[:3]
        phase = self._phase
        if phase == 0:  # above the object, turned to its yaw, open
            target = np.array([pos[0], pos[1], pos[2] + HOVER])
            self._advance_when(np.linalg.norm(tcp[:2] - pos[:2]) < 0.006 and abs(state[5] - yaw) < 0.05)
            return self._move(state, target, yaw, OPEN)
        if phase == 1:  # down around it
            target = np.array([pos[0], pos[1], pos[2] - 0.003])
            self._advance_when(abs(tcp[2] - target[2]) < 0.006 and np.linalg.norm(tcp[:2] - pos[:2]) < 0.008)
            return self._move(state, target, yaw, OPEN)
        if phase == 2:  # close
            self._advance_when(state[6] < 0.5, hold=1)
            return self._move(state, tcp, state[5], CLOSED)
        lift_z = TABLE_Z + half + 0.09
        if phase == 3:  # lift
            target = np.array([tcp[0], tcp[1], lift_z])
            self._advance_when(tcp[2] > lift_z - 0.01 and dest is not None)
            return self._move(state, target, state[5], CLOSED)
        dpos, dquat = objs[dest]
        dyaw = _yaw_of(dquat, float(np.clip(state[5], -0.78, 0.78))) if dest == "yellow" else state[5]
        place_z = TABLE_Z + dest_top + half + 0.008  # centre of the carried object just above the destination
        if phase == 4:  # carry above the destination
            target = np.array([dpos[0], dpos[1], lift_z])
            self._advance_when(np.linalg.norm(tcp[:2] - dpos[:2]) < 0.006 and abs(state[5] - dyaw) < 0.05)
            return self._move(state, target, dyaw, CLOSED)
        if phase == 5:  # lower
            target = np.array([dpos[0], dpos[1], place_z])
            self._advance_when(abs(tcp[2] - place_z) < 0.006)
            return self._move(state, target, dyaw, CLOSED)
        if phase == 6:  # open
            self._advance_when(state[6] > 0.8, hold=1)
            return self._move(state, tcp, state[5], OPEN)
        return self._move(state, np.array([tcp[0], tcp[1], place_z + HOVER]), state[5], OPEN)  # back off

    def _push(self, state: np.ndarray, objs: dict) -> np.ndarray:
        pos, _ = objs["block"]
        goal = objs["goal"][0]
        direction = goal[:2] - pos[:2]
        dist = float(np.linalg.norm(direction))
        direction = direction / max(dist, 1e-6)
        tcp = state[:3]
        # Far enough back that a turned block's corner (2.8 cm) clears the gripper link (2.2 cm radius) on the way down.
        behind = pos[:2] - 0.06 * direction
        low_z = TABLE_Z + 0.018
        if self._phase == 0:  # up, over to the spot behind the block, fingers across the push direction
            yaw = float(np.arctan2(direction[1], direction[0]))
            # The closed fingers are symmetric under a half turn; stay clear of the wrist's +-1.57 yaw bound, where
            # the IK loses roll and pitch under the push's contact forces (a slightly slanted pusher still works).
            self._push_yaw = float(np.clip((yaw + np.pi / 2) % np.pi - np.pi / 2, -1.2, 1.2))
            far = np.linalg.norm(tcp[:2] - behind) > 0.01
            if far and tcp[2] < low_z + HOVER / 2:  # rise before moving sideways, not through the block
                return self._move(state, np.array([tcp[0], tcp[1], low_z + HOVER]), self._push_yaw, CLOSED)
            self._advance_when(not far and abs(state[5] - self._push_yaw) < 0.08)
            return self._move(state, np.array([*behind, low_z + HOVER]), self._push_yaw, CLOSED)
        if self._phase == 1:  # down to the table
            self._advance_when(tcp[2] < low_z + 0.008)
            return self._move(state, np.array([*behind, low_z]), self._push_yaw, CLOSED)
        # Push along the block-goal line, slowly; stop once the block is close to the goal. If the pusher has
        # slipped off the line (the block turned away), line up again.
        if dist < 0.012:
            return self._move(state, tcp, self._push_yaw, CLOSED)
        rel = tcp[:2] - pos[:2]
        lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])
        if lateral > 0.015 or float(rel @ direction) > -0.015:
            self._phase = 0
            return self._move(state, np.array([tcp[0], tcp[1], low_z + HOVER]), self._push_yaw, CLOSED)
        # Constant speed along the line (slowing near the goal), plus a correction back onto the line.
        speed = min(PUSH_SPEED, dist / POS_SCALE)
        normal = np.array([-direction[1], direction[0]])
        offset = float(rel @ normal)
        a = self._move(state, np.array([tcp[0], tcp[1], low_z]), self._push_yaw, CLOSED)
        a[:2] = speed * direction - np.clip(offset / POS_SCALE, -0.2, 0.2) * normal
        return a
