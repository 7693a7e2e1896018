"""The WidowX 250 model against the published kinematics: forward kinematics, joint signs, limits, gripper."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from fleetrl.envs.widowx.arm import (
    ARM_JOINTS,
    FINGER_TRAVEL,
    HOME_POSE,
    ZERO_POSE_TCP,
    load_arm_model,
    tcp_pose,
)


@pytest.fixture(scope="module")
def model():
    return load_arm_model()


def test_zero_pose_tcp_matches_published(model):
    pos, rot = tcp_pose(model, np.zeros(6))
    np.testing.assert_allclose(pos, ZERO_POSE_TCP, atol=1e-6)
    np.testing.assert_allclose(rot, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(ZERO_POSE_TCP, (0.458325, 0.0, 0.36065))  # the published numbers themselves


def test_home_pose_tcp_matches_published(model):
    pos, _ = tcp_pose(model, np.array(HOME_POSE))
    np.testing.assert_allclose(pos, (0.227, 0.0, 0.261), atol=1e-3)


@pytest.mark.parametrize("joint, axis, sign", [
    ("waist", 1, +1),         # positive waist turns the arm to the left (+y)
    ("shoulder", 0, +1),      # positive shoulder tips the upper arm forward (+x)
    ("elbow", 2, -1),         # positive elbow pitches the forearm down
    ("wrist_angle", 2, -1),   # positive wrist angle pitches the gripper down
])
def test_joint_directions(model, joint, axis, sign):
    q = np.array(HOME_POSE)
    base, _ = tcp_pose(model, q)
    q[[j.name for j in ARM_JOINTS].index(joint)] += 0.05
    moved, _ = tcp_pose(model, q)
    assert sign * (moved[axis] - base[axis]) > 1e-3


def test_limits_and_efforts_are_the_published_ones(model):
    expected = {"waist": (3.14158, 10), "shoulder": (1.98968, 20), "elbow": (1.60570, 15),
                "forearm_roll": (3.14158, 2), "wrist_angle": (2.14675, 5), "wrist_rotate": (3.14158, 1)}
    for name, (upper, effort) in expected.items():
        j = model.joint(name)
        assert j.range[1] == pytest.approx(upper)
        np.testing.assert_allclose(model.jnt_actfrcrange[j.id], (-effort, effort))
    assert model.joint("shoulder").range[0] == pytest.approx(-1.88496)
    assert model.joint("elbow").range[0] == pytest.approx(-2.14675)
    assert model.joint("wrist_angle").range[0] == pytest.approx(-1.74533)


def _settle(model, ctrl_gripper, seconds=1.0):
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    data.ctrl[6], data.ctrl[7] = ctrl_gripper, -ctrl_gripper
    for _ in range(int(seconds / model.opt.timestep)):
        mujoco.mj_step(model, data)
    return data


@pytest.mark.parametrize("target, opening_mm", [(FINGER_TRAVEL[0], 30.0), (FINGER_TRAVEL[1], 74.0)])
def test_gripper_fingers_mirror_and_reach_their_travel(model, target, opening_mm):
    data = _settle(model, target)
    left, right = data.joint("left_finger").qpos[0], data.joint("right_finger").qpos[0]
    assert right == pytest.approx(-left, abs=5e-4)
    assert (left - right) * 1000 == pytest.approx(opening_mm, abs=1.5)


def test_servos_hold_the_home_pose_against_gravity(model):
    data = _settle(model, FINGER_TRAVEL[1])
    np.testing.assert_allclose(data.qpos[:6], HOME_POSE, atol=0.02)
    pos = data.site("tcp").xpos
    np.testing.assert_allclose(pos, (0.227, 0.0, 0.261), atol=0.01)


def test_wrist_camera_renders_headless(model):
    data = _settle(model, FINGER_TRAVEL[1], seconds=0.01)
    with mujoco.Renderer(model, 64, 64) as renderer:
        renderer.update_scene(data, camera="wrist")
        img = renderer.render()
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 1.0


def test_no_self_contact_at_home(model):
    """The arm's own links never touch at rest (a waist rubbing on its base would add friction to every turn)."""
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    mujoco.mj_forward(model, data)
    floor = model.geom("floor").id
    pairs = [(model.geom(c.geom1).name, model.geom(c.geom2).name) for c in data.contact[: data.ncon]
             if floor not in (c.geom1, c.geom2)]
    assert pairs == []
