"""What a robot server drives: the simulated WidowX (``sim``) or a physical arm through Interbotix (``interbotix``).

A backend takes Bridge-convention commands that the server has already checked against its safety limits:
metric TCP deltas about the previous target (m, rad) plus an absolute gripper opening in [0, 1].
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

#: The policy action's scale (fleetrl/envs/widowx/control.py): action 1 = this many m / rad per step.
POS_SCALE, ROT_SCALE = 0.05, 0.25


class RobotBackend(Protocol):
    """One arm and its camera."""

    def init(self, image_size: int) -> None:
        """Prepare the arm and camera; observations come at ``image_size`` pixels square."""

    def observe(self, image: bool = True) -> dict[str, np.ndarray]:
        """``state`` float32 (7,), ``joints`` float32 (6,), and ``image`` uint8 (S, S, 3) unless ``image`` is
        False."""

    def tcp_state(self) -> np.ndarray:
        """``state`` alone (no camera frame): what the safety checks need before a command."""

    def step(self, delta: np.ndarray) -> None:
        """One control step: TCP deltas (6,) in m / rad about the previous target, gripper (1,) in [0, 1]."""

    def move(self, pose: np.ndarray, duration_s: float) -> None:
        """Move the TCP to an absolute pose (x, y, z, roll, pitch, yaw)."""

    def reset(self) -> None:
        """Open the gripper and bring the arm to its start (home) pose."""

    def hold(self) -> None:
        """Keep the arm where it is now (watchdog, e-stop, or a client gone)."""

    def clock(self) -> float:
        """Seconds on the arm's own clock (the physics time of a simulation, wall time for a real arm)."""

    def close(self) -> None: ...


class SimBackend:
    """The MuJoCo WidowX of ``fleetrl/WidowX*`` behind the server, so the real-robot path runs without hardware."""

    def __init__(self, task: str = "reach"):
        self.task = task
        self.env: Any = None

    def init(self, image_size: int) -> None:
        from fleetrl.envs.widowx.env import WidowXEnv

        if self.env is not None and self.env.image_size == image_size:
            return  # a client's repeated init (e.g. a restarted actor): keep the scene and its renderer
        if self.env is not None:
            self.env.close()
        self.env = WidowXEnv(self.task, privileged=False, image=True, image_size=image_size,
                             terminate_on_success=False)
        self.env.reset(seed=0)

    def _need(self) -> Any:
        if self.env is None:
            raise RuntimeError("not initialised: send init first")
        return self.env

    def observe(self, image: bool = True) -> dict[str, np.ndarray]:
        env = self._need()
        if image:
            return env._obs()
        return {"state": env.sim.state(), "joints": env.sim.joints()}

    def tcp_state(self) -> np.ndarray:
        return self._need().sim.state().astype(np.float32)

    def clock(self) -> float:
        return float(self._need().sim.data.time)  # the simulated arm moves in physics time, not wall time

    def step(self, delta: np.ndarray) -> None:
        env = self._need()
        action = np.concatenate([delta[:3] / POS_SCALE, delta[3:6] / ROT_SCALE, [2.0 * delta[6] - 1.0]])
        env.sim.step(action)

    def move(self, pose: np.ndarray, duration_s: float) -> None:
        """Walk the target toward ``pose`` in control steps no larger than one step's limits."""
        env = self._need()
        steps = max(1, int(round(duration_s / 0.2)))
        for _ in range(steps):
            state = env.sim.state()
            d = np.clip((np.asarray(pose[:3]) - state[:3]) / POS_SCALE, -1, 1)
            rot = np.clip((np.asarray(pose[3:6]) - state[3:6]) / ROT_SCALE, -1, 1)
            env.sim.step(np.concatenate([d, rot, [2.0 * env.sim.controller.gripper - 1.0]]))

    def reset(self) -> None:
        self._need().reset()

    def hold(self) -> None:
        """The servo targets become the measured joint angles: the arm stops where it is instead of finishing
        the last commanded move."""
        from fleetrl.envs.widowx.arm import ARM_JOINTS

        env = self._need()
        env.sim.controller.reset(env.sim.data)
        env.sim.data.ctrl[: len(ARM_JOINTS)] = env.sim.controller.q_target

    def idle(self) -> None:
        """Advance the physics one control step with no new target (the arm servos on what it holds)."""
        import mujoco

        from fleetrl.envs.widowx.sim import SUBSTEPS

        env = self._need()
        mujoco.mj_step(env.sim.model, env.sim.data, nstep=SUBSTEPS)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


class InterbotixBackend:  # pragma: no cover - needs the Interbotix ROS stack and an arm
    """A physical WidowX 250 through the Interbotix Python API, with an OpenCV camera.

    Imported only when chosen, so fleetrl installs without ROS. Not exercised in CI (no arm there)."""

    def __init__(self, robot_model: str = "wx250s", camera: int = 0):
        try:
            from interbotix_xs_modules.arm import InterbotixManipulatorXS
        except ImportError as exc:
            raise RuntimeError("backend 'interbotix' needs the Interbotix Python API (interbotix_xs_modules, from "
                               "the Interbotix ROS workspace); install it on the robot's computer, or use --backend "
                               "sim") from exc
        self._bot = InterbotixManipulatorXS(robot_model=robot_model, group_name="arm", gripper_name="gripper")
        self._camera_index, self._camera, self._size = camera, None, 128
        self._target = np.zeros(6)

    def init(self, image_size: int) -> None:
        import cv2

        self._size = image_size
        self._camera = cv2.VideoCapture(self._camera_index)
        self.reset()

    def observe(self, image: bool = True) -> dict[str, np.ndarray]:
        import cv2

        obs = {"state": self.tcp_state(), "joints": np.asarray(self._bot.arm.get_joint_commands(), np.float32)}
        if image:
            ok, frame = self._camera.read() if self._camera is not None else (False, None)
            if not ok:
                raise RuntimeError("camera: no frame")
            obs["image"] = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (self._size, self._size)).astype(np.uint8)
        return obs

    def tcp_state(self) -> np.ndarray:
        from fleetrl.envs.widowx.control import bridge_rpy

        pose = np.asarray(self._bot.arm.get_ee_pose())
        grip = float(self._bot.gripper.gripper_value) if hasattr(self._bot.gripper, "gripper_value") else 1.0
        return np.concatenate([pose[:3, 3], bridge_rpy(pose[:3, :3]), [grip]]).astype(np.float32)

    @staticmethod
    def _interbotix_pose(pose: np.ndarray) -> list[float]:
        """Bridge pose (rpy 0 = gripper down) as Interbotix's (rpy 0 = the zero pose's identity orientation)."""
        from fleetrl.envs.widowx.control import R_DOWN, euler_to_mat, mat_to_euler

        rpy = mat_to_euler(euler_to_mat(np.asarray(pose[3:6])) @ R_DOWN)
        return [*map(float, pose[:3]), *map(float, rpy)]

    def step(self, delta: np.ndarray) -> None:
        self._target = self._target + delta[:6]
        self._bot.arm.set_ee_pose_components(*self._interbotix_pose(self._target), moving_time=0.2, blocking=False)
        (self._bot.gripper.open if delta[6] > 0.5 else self._bot.gripper.close)(delay=0.0)

    def move(self, pose: np.ndarray, duration_s: float) -> None:
        self._target = np.asarray(pose[:6], np.float64)
        self._bot.arm.set_ee_pose_components(*self._interbotix_pose(self._target), moving_time=duration_s,
                                             blocking=True)

    def reset(self) -> None:
        self._bot.gripper.open(delay=1.0)
        self._bot.arm.go_to_home_pose()
        self._target = np.asarray(self.tcp_state()[:6], np.float64)

    def hold(self) -> None:
        # Re-command the measured pose: the servos stay where the arm is instead of finishing a move.
        pose = self.tcp_state()[:6]
        self._target = np.asarray(pose, np.float64)
        self._bot.arm.set_ee_pose_components(*self._interbotix_pose(self._target), moving_time=0.5, blocking=False)

    def idle(self) -> None:
        pass

    def clock(self) -> float:
        import time

        return time.monotonic()

    def close(self) -> None:
        if self._camera is not None:
            self._camera.release()


def make_backend(name: str, **kwargs: Any) -> Any:
    """``sim`` or ``interbotix``; a clear error for anything else."""
    if name == "sim":
        return SimBackend(**kwargs)
    if name == "interbotix":
        return InterbotixBackend(**kwargs)
    raise ValueError(f"--backend: unknown robot backend {name!r} (known: sim, interbotix)")
