"""One simulated tabletop: the MuJoCo model and data, the Bridge controller, and the queries tasks are written in."""

from __future__ import annotations

import mujoco
import numpy as np

from fleetrl.envs.widowx.arm import ARM_JOINTS, FINGER_TRAVEL
from fleetrl.envs.widowx.control import R_DOWN, BridgeController, bridge_rpy
from fleetrl.envs.widowx.scene import SIM_WORKSPACE, START_TCP, TABLE_Z, MarkerSpec, ObjectSpec, tabletop_mjcf

SUBSTEPS = 100
"""Physics steps per control step: 5 Hz control at 500 Hz physics (timestep 2 ms)."""


class TabletopSim:
    """The arm at a table with objects and markers. Positions are in the arm's base frame (m)."""

    def __init__(self, objects: tuple[ObjectSpec, ...], markers: tuple[MarkerSpec, ...], max_image_size: int = 640):
        self.objects = {o.name: o for o in objects}
        self.markers = {m.name: m for m in markers}
        self.model = mujoco.MjModel.from_xml_string(tabletop_mjcf(objects, markers, max_image_size))
        self.data = mujoco.MjData(self.model)
        self.controller = BridgeController(self.model, workspace=SIM_WORKSPACE)
        m = self.model
        self._tcp = m.site("tcp").id
        self._arm_q = np.array([m.joint(j.name).qposadr[0] for j in ARM_JOINTS])
        self._fingers_q = np.array([m.joint("left_finger").qposadr[0], m.joint("right_finger").qposadr[0]])
        self._obj_q = {n: m.joint(f"{n}_joint").qposadr[0] for n in self.objects}
        self._obj_body = {n: m.body(n).id for n in self.objects}
        self._mocap = {n: m.body(n).mocapid[0] for n in self.markers}
        self._finger_bodies = {m.body("left_finger_link").id, m.body("right_finger_link").id}
        self._table_geom = m.geom("table").id
        # The arm's start joint angles, solved once: TCP at the real robot's start state, gripper down.
        self._q_start = self.controller.solve_ik(np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0]), np.array(START_TCP),
                                                 R_DOWN)

    # --- reset and stepping -----------------------------------------------------------------------------------
    def reset_arm(self) -> None:
        """All state back to zero, the arm at its start pose with the gripper open, servos holding it there."""
        mujoco.mj_resetData(self.model, self.data)
        d = self.data
        lo, hi = FINGER_TRAVEL
        d.qpos[self._arm_q] = self._q_start
        d.qpos[self._fingers_q] = (hi, -hi)
        d.ctrl[: len(ARM_JOINTS)] = self._q_start
        d.ctrl[len(ARM_JOINTS):] = (hi, -hi)

    def finish_reset(self) -> None:
        """After objects are placed: settle contacts for a few physics steps and take the TCP as the target."""
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=10)
        self.controller.reset(self.data)
        self.controller.gripper = 1.0

    def step(self, action: np.ndarray) -> None:
        self.controller.apply(self.data, action)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)

    # --- objects and markers --------------------------------------------------------------------------------
    def place(self, name: str, xy: np.ndarray, yaw: float = 0.0, z: float | None = None) -> None:
        """Put an object at rest: at ``xy`` on the table (or at height ``z`` for its centre), turned by ``yaw``."""
        a = self._obj_q[name]
        zc = TABLE_Z + self.objects[name].half_height if z is None else z
        self.data.qpos[a:a + 3] = (xy[0], xy[1], zc)
        self.data.qpos[a + 3:a + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        dof = self.model.joint(f"{name}_joint").dofadr[0]
        self.data.qvel[dof:dof + 6] = 0.0

    def set_marker(self, name: str, pos: np.ndarray) -> None:
        self.data.mocap_pos[self._mocap[name]] = pos

    def marker_pos(self, name: str) -> np.ndarray:
        return self.data.mocap_pos[self._mocap[name]].copy()

    def obj_pos(self, name: str) -> np.ndarray:
        a = self._obj_q[name]
        return self.data.qpos[a:a + 3].copy()

    def obj_quat(self, name: str) -> np.ndarray:
        a = self._obj_q[name]
        return self.data.qpos[a + 3:a + 7].copy()

    def bottom_z(self, name: str) -> float:
        """Height of the object's lowest point, for an upright object."""
        return float(self.obj_pos(name)[2] - self.objects[name].half_height)

    def top_z(self, name: str) -> float:
        return float(self.obj_pos(name)[2] + self.objects[name].half_height)

    # --- contacts ---------------------------------------------------------------------------------------------
    def _contact_bodies(self) -> list[tuple[int, int]]:
        d, m = self.data, self.model
        return [(m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]) for c in d.contact[: d.ncon]]

    def touching_fingers(self, name: str) -> bool:
        body = self._obj_body[name]
        return any((a == body and b in self._finger_bodies) or (b == body and a in self._finger_bodies)
                   for a, b in self._contact_bodies())

    def grasped(self, name: str) -> bool:
        """Both fingers touch the object."""
        body = self._obj_body[name]
        touched = {a if b == body else b for a, b in self._contact_bodies() if body in (a, b)}
        return self._finger_bodies <= touched

    def touching(self, name: str, other: str) -> bool:
        """The object touches ``other`` (an object name or ``"table"``)."""
        body = self._obj_body[name]
        if other == "table":
            d, m = self.data, self.model
            return any((c.geom1 == self._table_geom and m.geom_bodyid[c.geom2] == body)
                       or (c.geom2 == self._table_geom and m.geom_bodyid[c.geom1] == body) for c in d.contact[: d.ncon])
        ob = self._obj_body[other]
        return any({a, b} == {body, ob} for a, b in self._contact_bodies())

    # --- the robot's proprio --------------------------------------------------------------------------------
    @property
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    def state(self) -> np.ndarray:
        """The real robot's 7-D proprio: TCP x, y, z, roll, pitch, yaw (rpy = 0: gripper down), gripper (1 = open)."""
        rpy = bridge_rpy(self.data.site_xmat[self._tcp].reshape(3, 3))
        lo, hi = FINGER_TRAVEL
        left, right = self.data.qpos[self._fingers_q]
        opening = np.clip(((left - right) / 2 - lo) / (hi - lo), 0.0, 1.0)
        return np.concatenate([self.data.site_xpos[self._tcp], rpy, [opening]]).astype(np.float32)

    def joints(self) -> np.ndarray:
        return self.data.qpos[self._arm_q].astype(np.float32)
