"""Bridge-convention control on the simulated WidowX: each action dimension, workspace clipping, the gripper."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from fleetrl.envs.widowx.arm import load_arm_model
from fleetrl.envs.widowx.control import (
    POS_SCALE,
    R_DOWN,
    ROT_SCALE,
    BridgeController,
    Workspace,
    bridge_rpy,
    euler_to_mat,
    mat_to_euler,
)

START = np.array([0.3, 0.0, 0.1])  # inside Bridge's workspace box, gripper pointing down
OPEN = 1.0


@pytest.fixture
def arm():
    model = load_arm_model()
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    ctrl = BridgeController(model)
    q = ctrl.solve_ik(data.qpos[:6], START, R_DOWN)
    data.qpos[:6] = q
    data.ctrl[:6] = q
    mujoco.mj_forward(model, data)
    ctrl.reset(data)
    return model, data, ctrl


def _step(model, data, ctrl, action):
    ctrl.apply(data, action)
    for _ in range(100):  # 5 Hz control at 500 Hz physics
        mujoco.mj_step(model, data)


def _pose(data):
    return data.site("tcp").xpos.copy(), bridge_rpy(data.site("tcp").xmat.reshape(3, 3))


def test_euler_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(100):
        rpy = rng.uniform([-np.pi, -1.5, -np.pi], [np.pi, 1.5, np.pi])
        np.testing.assert_allclose(mat_to_euler(euler_to_mat(rpy)), rpy, atol=1e-9)
    np.testing.assert_allclose(bridge_rpy(R_DOWN), 0.0, atol=1e-12)  # rpy = 0 is "gripper down"


@pytest.mark.parametrize("dim", range(6))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_each_action_dimension_moves_the_tcp_by_its_scale(arm, dim, sign):
    model, data, ctrl = arm
    pos0, rpy0 = _pose(data)
    action = np.zeros(7)
    action[6] = OPEN
    action[dim] = sign
    _step(model, data, ctrl, action)
    hold = np.zeros(7)
    hold[6] = OPEN
    for _ in range(2):  # let the servos settle on the new target
        _step(model, data, ctrl, hold)
    pos, rpy = _pose(data)
    expected = np.zeros(6)
    expected[dim] = sign * (POS_SCALE if dim < 3 else ROT_SCALE)
    # Within 3 mm (the servos' sag under gravity is ~1.5 mm) and 0.02 rad; the other five stay put.
    np.testing.assert_allclose(pos - pos0, expected[:3], atol=3e-3)
    np.testing.assert_allclose(rpy - rpy0, expected[3:], atol=0.02)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_target_is_clipped_to_the_workspace(arm, dim):
    model, data, ctrl = arm
    action = np.zeros(7)
    action[6] = OPEN
    action[dim] = 1.0
    for _ in range(12):
        _step(model, data, ctrl, action)
    high = Workspace().high[dim]
    assert ctrl.target_pos[dim] == pytest.approx(high)
    assert data.site("tcp").xpos[dim] <= high + 5e-3
    assert data.site("tcp").xpos[dim] >= high - 5e-3  # it got there, too


def test_yaw_is_clipped(arm):
    model, data, ctrl = arm
    action = np.zeros(7)
    action[6] = OPEN
    action[5] = 1.0
    for _ in range(10):  # 2.5 rad asked for
        ctrl.apply(data, action)
    assert bridge_rpy(ctrl.target_rot)[2] == pytest.approx(Workspace().yaw[1])


@pytest.mark.parametrize("gripper, opening_mm", [(-1.0, 30.0), (0.0, 52.0), (1.0, 74.0)])
def test_gripper_is_an_absolute_target(arm, gripper, opening_mm):
    model, data, ctrl = arm
    action = np.zeros(7)
    action[6] = gripper
    for _ in range(3):
        _step(model, data, ctrl, action)
    opening = data.joint("left_finger").qpos[0] - data.joint("right_finger").qpos[0]
    assert opening * 1000 == pytest.approx(opening_mm, abs=2.0)
