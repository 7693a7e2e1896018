"""The tabletop scene around the simulated WidowX: table, objects, goal markers and a Bridge-like third-person camera.

Frame: the arm's base frame (x forward, y left, z up). The arm stands on a 5 cm riser, so the table top is at
``TABLE_Z = -0.05``; objects rest on the table in front of the arm. Goal markers are mocap bodies with visual-only
geoms: they are placed per episode through ``data.mocap_pos`` and never touch anything.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fleetrl.envs.widowx.arm import (
    FINGER_TRAVEL,
    arm_actuators_xml,
    arm_bodies_xml,
    arm_contact_excludes_xml,
    arm_defaults_xml,
)
from fleetrl.envs.widowx.control import Workspace

TABLE_Z = -0.05
"""Height of the table top in the arm's base frame (m)."""
#: The real robot server's start state (robot-protocol.md): TCP at (0.3, 0, 0.15), gripper down and open.
START_TCP = (0.3, 0.0, 0.15)
#: Bridge's workspace box, except the lowest TCP height: 1.5 cm above the table keeps the fingertips (1.24 cm past
#: the TCP) just clear of it. Bridge's -0.1 would have the servos press the fingers into the sim's rigid table.
SIM_WORKSPACE = Workspace(low=(0.1, -0.15, TABLE_Z + 0.015), high=(0.45, 0.25, 0.18))
#: Third-person camera: in front of the arm and to its left, looking down at the middle of the workspace, like the
#: over-the-table cameras of Bridge setups.
CAMERA_POS = (0.95, 0.42, 0.5)
CAMERA_TARGET = (0.2, 0.0, 0.02)
CAMERA_FOVY = 42.0


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """A free rigid object on the table: a box (half sizes) or a cylinder (radius, half height)."""

    name: str
    shape: str  # "box" | "cylinder"
    size: tuple[float, ...]
    rgba: tuple[float, float, float, float]
    mass: float

    @property
    def half_height(self) -> float:
        return self.size[2] if self.shape == "box" else self.size[1]

    @property
    def half_extent_xy(self) -> float:
        """Half the object's footprint (box: the smaller half side; cylinder: the radius)."""
        return min(self.size[:2]) if self.shape == "box" else self.size[0]


@dataclasses.dataclass(frozen=True)
class MarkerSpec:
    """A visual-only goal marker (mocap body): a sphere (radius) or a flat disc (radius)."""

    name: str
    shape: str  # "sphere" | "disc"
    radius: float
    rgba: tuple[float, float, float, float]


def _v(x: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(f"{float(a):.6g}" for a in x)


def _camera_xyaxes(pos: tuple[float, ...], target: tuple[float, ...]) -> str:
    """MuJoCo camera axes (x right, y up; the camera looks along -z) looking from ``pos`` at ``target``."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _v(np.concatenate([right, up]))


def _object_xml(obj: ObjectSpec) -> str:
    # Objects start well away from each other; the task moves them into place at every reset.
    geom = (f'<geom name="{obj.name}_geom" type="{obj.shape}" size="{_v(obj.size)}" rgba="{_v(obj.rgba)}" '
            f'mass="{obj.mass}" friction="1.0 0.005 0.0001" condim="4"/>')
    return f'<body name="{obj.name}" pos="0.3 0 {TABLE_Z + obj.half_height}"><freejoint name="{obj.name}_joint"/>' \
           f'{geom}</body>'


def _marker_xml(marker: MarkerSpec) -> str:
    if marker.shape == "sphere":
        geom = f'type="sphere" size="{marker.radius}"'
    else:  # a disc lying on the table
        geom = f'type="cylinder" size="{marker.radius} 0.0005"'
    return (f'<body name="{marker.name}" mocap="true" pos="0.3 0 {TABLE_Z}">'
            f'<geom name="{marker.name}_geom" {geom} rgba="{_v(marker.rgba)}" contype="0" conaffinity="0" '
            f'group="1"/></body>')


def tabletop_mjcf(objects: tuple[ObjectSpec, ...] = (), markers: tuple[MarkerSpec, ...] = (),
                  max_image_size: int = 640) -> str:
    """MJCF of the arm on its riser at a table with the given objects and markers; shadows off, and no
    multisampling: on a CPU renderer (Mesa llvmpipe) 4x MSAA doubled the time of a 128x128 frame (17 -> 8 ms)."""
    offscreen = max(640, int(max_image_size))
    return f"""<mujoco model="wx250s_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual><global offwidth="{offscreen}" offheight="{offscreen}"/><quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.4 0.4 0.4"/></visual>
  <default>{arm_defaults_xml()}
  </default>
  <worldbody>
    <light pos="0.3 0 1.5" dir="0 0 -1" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="2 2 0.01" rgba="0.55 0.55 0.58 1"/>
    <geom name="table" type="box" pos="0.25 0 {TABLE_Z - 0.02}" size="0.4 0.45 0.02" rgba="0.72 0.6 0.45 1"
          friction="1.0 0.005 0.0001"/>
    <geom name="riser" type="box" pos="0 0 {TABLE_Z / 2}" size="0.07 0.07 {-TABLE_Z / 2}" rgba="0.3 0.3 0.3 1"/>
    <camera name="scene" pos="{_v(CAMERA_POS)}" xyaxes="{_camera_xyaxes(CAMERA_POS, CAMERA_TARGET)}"
            fovy="{CAMERA_FOVY}"/>
    {arm_bodies_xml()}
    {"".join(_object_xml(o) for o in objects)}
    {"".join(_marker_xml(m) for m in markers)}
  </worldbody>
  <contact>{arm_contact_excludes_xml()}</contact>
  <actuator>{arm_actuators_xml()}</actuator>
</mujoco>"""


def finger_ctrl(opening: float) -> tuple[float, float]:
    """Servo targets of the left and right finger for a gripper opening in [0, 1] (1 = open)."""
    lo, hi = FINGER_TRAVEL
    w = lo + float(np.clip(opening, 0.0, 1.0)) * (hi - lo)
    return w, -w
