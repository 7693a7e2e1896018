"""Bridge-convention control of the simulated WidowX: 7-D delta actions to joint servo targets.

Action (policy side, each in [-1, 1]): Δx, Δy, Δz scaled to ±0.05 m, Δroll, Δpitch, Δyaw scaled to ±0.25 rad, and
an absolute gripper target (-1 closed ... +1 open). As on the real robot, deltas are applied to the previous
*target* pose (not the measured one), positions along base-frame axes and rotations about base-frame axes through
the TCP; the target is clipped to the workspace box. Damped least squares IK turns the target pose into joint
targets for the position servos. The reference orientation (roll = pitch = yaw = 0) points the gripper down.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from fleetrl.envs.widowx.arm import ARM_JOINTS, FINGER_TRAVEL

POS_SCALE = 0.05
"""m per step at action 1."""
ROT_SCALE = 0.25
"""rad per step at action 1."""
#: The TCP frame when the gripper points down: its x axis (the approach direction) along -z.
R_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Box the TCP target is clipped to (Bridge setups' bounds), with a yaw range."""

    low: tuple[float, float, float] = (0.1, -0.15, -0.1)
    high: tuple[float, float, float] = (0.45, 0.25, 0.18)
    yaw: tuple[float, float] = (-1.57, 1.57)


def euler_to_mat(rpy: np.ndarray) -> np.ndarray:
    """Extrinsic roll-pitch-yaw about base x, y, z (``R = Rz(yaw) Ry(pitch) Rx(roll)``)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def mat_to_euler(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_mat` (pitch in [-pi/2, pi/2])."""
    pitch = -np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    roll = np.arctan2(rot[2, 1], rot[2, 2])
    yaw = np.arctan2(rot[1, 0], rot[0, 0])
    return np.array([roll, pitch, yaw])


def bridge_rpy(tcp_rot: np.ndarray) -> np.ndarray:
    """The Bridge orientation (rpy = 0: gripper down) of a TCP rotation matrix."""
    return mat_to_euler(tcp_rot @ R_DOWN.T)


class BridgeController:
    """Keeps the target pose, applies delta actions, solves IK and writes the servo targets into ``data.ctrl``."""

    def __init__(self, model: mujoco.MjModel, workspace: Workspace = Workspace(), ik_iters: int = 50,
                 damping: float = 1e-3):
        self.model, self.workspace = model, workspace
        self._scratch = mujoco.MjData(model)
        self._site = model.site("tcp").id
        self._qadr = np.array([model.joint(j.name).qposadr[0] for j in ARM_JOINTS])
        self._dofs = np.array([model.joint(j.name).dofadr[0] for j in ARM_JOINTS])
        self._limits = np.array([j.limits for j in ARM_JOINTS])
        self._iters, self._damping = ik_iters, damping
        self.target_pos = np.zeros(3)
        self.target_rot = R_DOWN.copy()
        self.gripper = 1.0
        self.q_target = np.zeros(len(ARM_JOINTS))
        self._jacp, self._jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        self.last_iterations = 0

    def reset(self, data: mujoco.MjData) -> None:
        """Take the current TCP pose as the target (call after placing the arm)."""
        mujoco.mj_kinematics(self.model, data)
        self.target_pos = data.site_xpos[self._site].copy()
        self.target_rot = data.site_xmat[self._site].reshape(3, 3).copy()
        self.q_target = data.qpos[self._qadr].copy()

    def apply(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """Move the target by one 7-D action (clipped to [-1, 1]) and set the servo targets."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        ws = self.workspace
        self.target_pos = np.clip(self.target_pos + a[:3] * POS_SCALE, ws.low, ws.high)
        rot = euler_to_mat(a[3:6] * ROT_SCALE) @ self.target_rot
        rpy = bridge_rpy(rot)
        if not ws.yaw[0] <= rpy[2] <= ws.yaw[1]:
            rpy[2] = np.clip(rpy[2], *ws.yaw)
            rot = euler_to_mat(rpy) @ R_DOWN
        self.target_rot = rot
        self.gripper = (a[6] + 1.0) / 2.0
        self.q_target = self.solve_ik(data.qpos[self._qadr], self.target_pos, self.target_rot)
        data.ctrl[: len(ARM_JOINTS)] = self.q_target
        lo, hi = FINGER_TRAVEL
        width = lo + self.gripper * (hi - lo)
        data.ctrl[len(ARM_JOINTS)] = width  # left finger
        data.ctrl[len(ARM_JOINTS) + 1] = -width  # right finger, mirrored

    def solve_ik(self, q0: np.ndarray, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """Joint angles (within limits) putting the TCP at ``pos`` with rotation ``rot``; damped least squares
        from ``q0``. Stops within 0.1 mm and 1 mrad, or when an iteration no longer reduces the error (a target out
        of reach: the result is then the closest pose found)."""
        m, d = self.model, self._scratch
        q = np.array(q0, dtype=np.float64)
        jacp, jacr = self._jacp, self._jacr
        err = np.empty(6)
        best, best_q = np.inf, q
        self.last_iterations = 0  # kinematics evaluations of the last solve (benchmarks read it)
        for _ in range(self._iters):
            self.last_iterations += 1
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err[:3] = pos - d.site_xpos[self._site]
            # Orientation error: half the vee of (R_target R_current^T - its transpose), i.e. the small rotation
            # taking the current frame onto the target (closed form: a sum of column cross products costs 25x more).
            r = rot @ d.site_xmat[self._site].reshape(3, 3).T
            err[3], err[4], err[5] = 0.5 * (r[2, 1] - r[1, 2]), 0.5 * (r[0, 2] - r[2, 0]), 0.5 * (r[1, 0] - r[0, 1])
            pos_err, rot_err = err[:3] @ err[:3], err[3:] @ err[3:]
            if pos_err < 1e-8 and rot_err < 1e-6:
                break
            total = pos_err + rot_err
            if total < best:
                best_q, improved = q, total < 0.98 * best
                best = total
            else:
                improved = False
            if not improved:  # an iteration gained less than 2 %: out of reach, or as close as DLS gets
                q = best_q
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self._site)
            jac = np.vstack([jacp[:, self._dofs], jacr[:, self._dofs]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + self._damping * np.eye(6), err)
            q = np.clip(q + dq, self._limits[:, 0], self._limits[:, 1])
        return q
