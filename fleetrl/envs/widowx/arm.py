"""The WidowX 250 6DOF (wx250s) as MJCF, built from primitive geoms and the published kinematics.

Frames start parallel to the base (x forward, y left, z up). At the zero pose the upper arm is vertical and the
forearm horizontal, and the tool point (TCP) sits at (0.458325, 0, 0.36065) with identity orientation. Joint
offsets, limits, efforts, masses and finger travel follow Interbotix's wx250s description (see
``../shared/reference/widowx.md``); the servo stiffness is SimplerEnv's identified 5 Hz gain, critically damped.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np


@dataclasses.dataclass(frozen=True)
class ArmJoint:
    name: str
    body: str
    offset: tuple[float, float, float]
    """Child body position in its parent's frame (m)."""
    axis: tuple[int, int, int]
    limits: tuple[float, float]
    """rad"""
    effort: float
    """N m"""
    kp: float
    kv: float


#: The six arm joints, base to wrist. Positive shoulder tips the upper arm forward; positive elbow and wrist_angle
#: pitch the distal link down (rotation about +y).
ARM_JOINTS: tuple[ArmJoint, ...] = (
    ArmJoint("waist", "shoulder_link", (0, 0, 0.072), (0, 0, 1), (-3.14158, 3.14158), 10.0, 1169.8, 330.0),
    ArmJoint("shoulder", "upper_arm_link", (0, 0, 0.03865), (0, 1, 0), (-1.88496, 1.98968), 20.0, 730.0, 180.0),
    ArmJoint("elbow", "upper_forearm_link", (0.04975, 0, 0.25), (0, 1, 0), (-2.14675, 1.60570), 15.0, 808.5, 152.1),
    ArmJoint("forearm_roll", "lower_forearm_link", (0.175, 0, 0), (1, 0, 0), (-3.14158, 3.14158), 2.0, 1229.1,
             309.6),
    ArmJoint("wrist_angle", "wrist_link", (0.075, 0, 0), (0, 1, 0), (-1.74533, 2.14675), 5.0, 1272.3, 201.0),
    ArmJoint("wrist_rotate", "gripper_link", (0.065, 0, 0), (1, 0, 0), (-3.14158, 3.14158), 1.0, 1056.3, 269.5),
)
#: Link masses (kg) of the bodies above; the base is 0.539 kg.
LINK_MASS = {"base_link": 0.539, "shoulder_link": 0.481, "upper_arm_link": 0.431, "upper_forearm_link": 0.235,
             "lower_forearm_link": 0.221, "wrist_link": 0.085, "gripper_link": 0.073 + 0.034 + 0.004}
FINGER_OFFSET = 0.066
"""Finger frame along the gripper link's x axis (m)."""
FINGER_TRAVEL = (0.015, 0.037)
"""Each finger's distance from the centre line (m): opening 30-74 mm."""
FINGER_MASS = 0.016
FINGER_EFFORT = 5.0
TCP_OFFSET = 0.093575
"""Tool point along the gripper link's x axis (m)."""
ZERO_POSE_TCP = (0.458325, 0.0, 0.36065)
SLEEP_POSE = (0.0, -1.80, 1.55, 0.0, 0.8, 0.0)
HOME_POSE = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)


def _vec(v: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def _link_geom(body: str, child_offset: tuple[float, float, float]) -> str:
    """A capsule from this body's origin to its child's, carrying the link's mass (inertia from the shape)."""
    end = np.asarray(child_offset, float)
    mass = LINK_MASS[body]
    if np.linalg.norm(end) < 1e-6:
        return f'<geom name="{body}_geom" type="sphere" size="0.025" mass="{mass}" class="link"/>'
    return (f'<geom name="{body}_geom" type="capsule" fromto="0 0 0 {_vec(end)}" size="0.022" mass="{mass}" '
            f'class="link"/>')


def arm_bodies_xml(prefix: str = "") -> str:
    """The arm's ``<body>`` tree (base link downwards), to place inside a worldbody."""
    parts = [f'<body name="{prefix}base_link" pos="0 0 0">',
             f'<geom name="{prefix}base_geom" type="cylinder" size="0.06 0.036" pos="0 0 0.036" '
             f'mass="{LINK_MASS["base_link"]}" class="link"/>']
    opened = 1
    for i, j in enumerate(ARM_JOINTS):
        nxt = ARM_JOINTS[i + 1].offset if i + 1 < len(ARM_JOINTS) else (FINGER_OFFSET, 0.0, 0.0)
        parts.append(f'<body name="{prefix}{j.body}" pos="{_vec(j.offset)}">')
        # The small wrist servos (1-5 N m) get a smaller reflected rotor inertia than the big ones: with 0.1 they
        # could not turn 0.25 rad within one 0.2 s control step, which the real wrist does.
        joint_class = "wrist" if j.effort <= 5.0 else "arm"
        parts.append(f'<joint name="{prefix}{j.name}" axis="{_vec(j.axis)}" range="{_vec(j.limits)}" '
                     f'actuatorfrcrange="{-j.effort} {j.effort}" class="{joint_class}"/>')
        parts.append(_link_geom(j.body, nxt).replace('name="', f'name="{prefix}', 1))
        opened += 1
    # Gripper: two fingers sliding along y (each with its own servo, driven mirrored); TCP site, wrist camera.
    fx = FINGER_OFFSET
    for side, sign in (("left", 1), ("right", -1)):
        lo, hi = FINGER_TRAVEL
        rng = f"{lo} {hi}" if sign > 0 else f"{-hi} {-lo}"
        parts.append(f'<body name="{prefix}{side}_finger_link" pos="{fx} 0 0">'
                     f'<joint name="{prefix}{side}_finger" type="slide" axis="0 1 0" range="{rng}" class="finger"/>'
                     f'<geom name="{prefix}{side}_finger_geom" type="box" size="0.02 0.005 0.012" pos="0.02 0 0" '
                     f'mass="{FINGER_MASS}" class="finger"/></body>')
    parts.append(f'<site name="{prefix}tcp" pos="{TCP_OFFSET} 0 0" size="0.005" rgba="1 0 0 1"/>')
    # Wrist camera: on the gripper, looking along the gripper's x axis (MuJoCo cameras look along their -z).
    parts.append(f'<camera name="{prefix}wrist" pos="0.02 0 0.05" xyaxes="0 -1 0 0.5 0 1" fovy="70"/>')
    return "\n".join(parts) + "</body>" * opened


def arm_defaults_xml() -> str:
    return """
    <default class="arm"><joint damping="0.1" frictionloss="0.1" armature="0.1"/>
      <default class="wrist"><joint armature="0.01"/></default></default>
    <default class="finger"><joint damping="0.1" frictionloss="0.1" armature="0.01"/>
      <geom friction="2.0 0.005 0.0001" rgba="0.2 0.2 0.2 1"/></default>
    <default class="link"><geom rgba="0.15 0.15 0.18 1" contype="1" conaffinity="1"/></default>"""


def arm_actuators_xml(prefix: str = "") -> str:
    """Position servos with SimplerEnv's 5 Hz stiffness, force-limited to each joint's effort; two finger servos."""
    # SimplerEnv's stiffness with critical damping: its identified damping values belong to ManiSkill's drive
    # model; used as MuJoCo kv they make the servos ~15x overdamped (time constant kv/kp ~ 0.3 s, longer than a
    # 0.2 s control step), so a commanded delta would be only half done by the next step.
    lines = [f'<position name="{prefix}{j.name}_servo" joint="{prefix}{j.name}" kp="{j.kp}" dampratio="1" '
             f'ctrlrange="{_vec(j.limits)}"/>' for j in ARM_JOINTS]
    # One servo per finger, driven with mirrored targets (BridgeController writes both): an equality constraint
    # mirroring the fingers fought the joint limits here and let both fingers drift sideways together.
    lo, hi = FINGER_TRAVEL
    for side, rng in (("left", f"{lo} {hi}"), ("right", f"{-hi} {-lo}")):
        lines.append(f'<position name="{prefix}{side}_finger_servo" joint="{prefix}{side}_finger" kp="200" '
                     f'dampratio="0.95" ctrlrange="{rng}" forcerange="{-FINGER_EFFORT} {FINGER_EFFORT}"/>')
    return "\n".join(lines)


def arm_contact_excludes_xml(prefix: str = "") -> str:
    """Contacts MuJoCo's parent filter misses: the base is welded to the world, so base and shoulder (whose geoms
    touch at the waist) are not filtered, and the waist would rub on the base; the fingers never touch each other's
    inner faces in the real gripper either."""
    return (f'<exclude body1="{prefix}base_link" body2="{prefix}shoulder_link"/>'
            f'<exclude body1="{prefix}left_finger_link" body2="{prefix}right_finger_link"/>')


def arm_only_mjcf() -> str:
    """A scene with just the arm on a floor: for kinematics tests and quick looks."""
    lo, hi = FINGER_TRAVEL
    return f"""<mujoco model="wx250s">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual><quality shadowsize="0"/></visual>
  <default>{arm_defaults_xml()}
  </default>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" castshadow="false"/>
    <geom name="floor" type="plane" size="1 1 0.01" rgba="0.8 0.8 0.8 1"/>
    {arm_bodies_xml()}
  </worldbody>
  <contact>{arm_contact_excludes_xml()}</contact>
  <actuator>{arm_actuators_xml()}</actuator>
  <keyframe>
    <key name="home" qpos="{_vec(HOME_POSE)} {hi} {-hi}" ctrl="{_vec(HOME_POSE)} {hi} {-hi}"/>
    <key name="zero" qpos="0 0 0 0 0 0 {hi} {-hi}" ctrl="0 0 0 0 0 0 {hi} {-hi}"/>
  </keyframe>
</mujoco>"""


def load_arm_model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(arm_only_mjcf())


def tcp_pose(model: mujoco.MjModel, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward kinematics: TCP position (m) and rotation matrix for the 6 arm joint angles."""
    data = mujoco.MjData(model)
    data.qpos[:6] = joints
    mujoco.mj_kinematics(model, data)
    site = model.site("tcp").id
    return data.site_xpos[site].copy(), data.site_xmat[site].reshape(3, 3).copy()
