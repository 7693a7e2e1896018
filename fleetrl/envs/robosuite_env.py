"""robosuite 1.5 manipulation tasks (Panda) behind fleetrl's tabletop env conventions.

One policy and learner serve these and the simulated WidowX envs, so the spaces mean the same things:

- Action ``Box(-1, 1, (7,), float32)``: Δx, Δy, Δz, Δroll, Δpitch, Δyaw, gripper (+1 = open, -1 = close).
  Robot: Panda with robosuite's default controller for it (``controllers/config/robots/default_panda.json``): a
  BASIC composite controller whose only part is the right arm's ``OSC_POSE`` (delta input, ``input_ref_frame:
  base``, kp 150, critically damped) plus a ``GRIP`` gripper, so the 7-D action is [6 arm, 1 gripper]. OSC scales
  [-1, 1] to ±0.05 m and ±0.5 rad per control step (20 Hz); the rotation part is an axis-angle about the robot-base
  axes applied to the *achieved* eef orientation. (WidowX uses ±0.25 rad: the rotation scales differ by 2x.)
  robosuite's gripper is -1 open / +1 close, so the adapter negates it; robosuite only uses the command's *sign*
  and moves the finger target 0.2 of its travel per step (open to closed in 10 steps, 0 holds it).
- Observation dict: ``state`` (7,) float32 = eef (grip site) x, y, z in the world frame (the Panda base is
  axis-aligned with it in these tasks, so action axes are state axes), roll, pitch, yaw with
  ``R = Rz(yaw) Ry(pitch) Rx(roll)`` of the eef orientation relative to gripper-down (:data:`R_DOWN`, as on the
  WidowX: all zero = pointing down), gripper opening in [0, 1] (1 = open); ``joints`` (7,) arm joint positions;
  ``object`` robosuite's privileged ``object-state`` (if ``privileged``); ``image`` uint8 agentview (if ``image``,
  128 px, or ``image_size``).
- Reward: robosuite's sparse reward, or its shaped one with ``reward_type="dense"``.
- ``info["success"]`` on every step; the horizon truncates (never terminates); success terminates if asked.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fleetrl.envs.widowx.control import mat_to_euler  # the same extrinsic rpy convention

ROBOSUITE_TASKS: dict[str, dict[str, Any]] = {
    # Horizons: robosuite's own default (1000) and its benchmark (500) are far longer than the tasks need; robomimic
    # evaluates Lift/Can with 400-step rollouts, its human demos average ~50 (Lift) and ~120 (Can) steps. A few times
    # a proficient demo keeps exploration episodes short while leaving room for slow policies.
    "Lift": {"task": "Lift", "horizon": 200},
    "Stack": {"task": "Stack", "horizon": 300},
    "PickPlaceCan": {"task": "PickPlaceCan", "horizon": 400},
    "Door": {"task": "Door", "horizon": 300},
}
"""Gym id suffix (``fleetrl/Robosuite-<suffix>-v0``) -> :class:`RobosuiteEnv` kwargs."""

ENTRY_POINT = "fleetrl.envs.robosuite_env:RobosuiteEnv"
CAMERA = "agentview"
RENDER_SIZE = 256
"""Default height and width of :meth:`RobosuiteEnv.render` frames (``render_size`` overrides it)."""

#: The Panda grip site's orientation when pointing straight down at its home yaw (site x along world y, z down).
#: Measuring the eef orientation relative to it keeps roll/pitch/yaw near 0 at home instead of roll at the ±pi wrap.
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


class RobosuiteEnv(gym.Env):
    """A robosuite Panda task with fleetrl's action, observation, seeding and time-limit conventions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str, horizon: int | None = None, image: bool = False, image_size: int | None = None,
                 privileged: bool = True, reward_type: str = "sparse", terminate_on_success: bool = True,
                 render_mode: str | None = None, render_size: int = RENDER_SIZE):
        # The same keywords as WidowXEnv (image, image_size, reward_type), so env.kwargs carry over between them.
        # An image_size alone also turns the camera on.
        if image and image_size is None:
            image_size = 128
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type: must be 'sparse' or 'dense', got {reward_type!r}")
        if task not in ROBOSUITE_TASKS:
            raise ValueError(f"unknown robosuite task {task!r}; known tasks: {', '.join(ROBOSUITE_TASKS)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size}")
        horizon = ROBOSUITE_TASKS[task]["horizon"] if horizon is None else horizon
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.task, self.horizon, self.image_size, self.privileged = task, int(horizon), image_size, privileged
        self.terminate_on_success, self.render_mode = terminate_on_success, render_mode
        self.render_size = int(render_size)

        # Lazy: importing robosuite takes seconds and sets MUJOCO_GL, which must not happen on `import fleetrl`.
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        self._env: Any = robosuite.make(
            task, robots="Panda", controller_configs=load_composite_controller_config(robot="Panda"),
            has_renderer=False,
            # The GL context costs memory and start-up time; only create it when a frame can be asked for.
            has_offscreen_renderer=image_size is not None or render_mode == "rgb_array",
            use_camera_obs=False,  # frames come from sim.render below, at our sizes, only when needed
            use_object_obs=privileged, reward_shaping=reward_type == "dense",
            # robosuite's own time limit would end episodes as `done` (a termination); we truncate ourselves.
            horizon=self.horizon, ignore_done=True,
            hard_reset=False,  # reset in ~3 ms instead of rebuilding the sim (>1 s)
            # The model itself is drawn from env.rng when built (Lift's cube size, for one): a fixed build seed
            # makes every instance the same world, so two actors given one seed play the same episode. Resets
            # reseed env.rng below.
            seed=0,
        )
        robot = self._env.robots[0]
        self._eef_site = robot.eef_site_id["right"]
        model = self._env.sim.model
        joints = [model.joint_name2id(j) for j in robot.gripper["right"].joints]
        self._finger_qpos = np.array([model.jnt_qposadr[j] for j in joints])
        lo, hi = model.jnt_range[joints, 0].copy(), model.jnt_range[joints, 1].copy()
        # Each finger is closed at the end of its range nearest 0 (Panda: [0, 0.04] and [-0.04, 0]).
        self._finger_closed = np.where(np.abs(lo) <= np.abs(hi), lo, hi)
        self._finger_travel = hi - lo
        self._t = 0

        raw = self._env.observation_spec()
        vec = gym.spaces.Box
        spaces: dict[str, gym.spaces.Space] = {
            "state": vec(np.array([-np.inf] * 3 + [-np.pi, -np.pi / 2, -np.pi, 0.0], np.float32),
                         np.array([np.inf] * 3 + [np.pi, np.pi / 2, np.pi, 1.0], np.float32), dtype=np.float32),
            "joints": vec(-np.inf, np.inf, raw["robot0_joint_pos"].shape, np.float32),
        }
        if privileged:
            spaces["object"] = vec(-np.inf, np.inf, raw["object-state"].shape, np.float32)
        if image_size is not None:
            spaces["image"] = vec(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; a seed fixes the object placements and initial joint noise (and so the trajectory)."""
        super().reset(seed=seed)
        if seed is not None:
            # All of robosuite's reset randomness (placement samplers, robot joint noise) is drawn from the one
            # Generator `env.rng`, which the samplers captured by reference when the model was built. Reseed that
            # object in place (replacing it would leave the samplers on the old stream); global numpy is untouched.
            # Without a seed the stream just continues, so each reset gets new placements.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._t = 0
        return self._obs(raw), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one 20 Hz control step; ``truncated`` at the horizon, ``terminated`` on success if configured."""
        a = np.array(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 7 finite numbers, got {action!r}")
        a = np.clip(a, -1.0, 1.0)
        a[6] = -a[6]  # fleetrl: +1 open; robosuite: -1 open
        raw, reward, _, info = self._env.step(a)
        self._t += 1
        success = bool(self._env._check_success())
        info = {**info, "success": success}
        return self._obs(raw), float(reward), success and self.terminate_on_success, self._t >= self.horizon, info

    def render(self) -> np.ndarray | None:
        """A fresh ``(render_size, render_size, 3)`` uint8 agentview frame with ``render_mode="rgb_array"``, else
        None."""
        if self.render_mode != "rgb_array":
            return None
        return self._camera(self.render_size)

    def close(self) -> None:
        """Free robosuite's sim and GL context (idempotent)."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def _camera(self, size: int) -> np.ndarray:
        # MuJoCo reads pixels bottom row first; the flip's copy also detaches us from the renderer's buffer.
        frame = self._env.sim.render(width=size, height=size, camera_name=CAMERA)
        return frame[::-1].copy()

    def _state(self) -> np.ndarray:
        data = self._env.sim.data
        rot = data.site_xmat[self._eef_site].reshape(3, 3) @ R_DOWN.T
        opening = np.abs(data.qpos[self._finger_qpos] - self._finger_closed) / self._finger_travel
        grip = float(np.clip(opening.mean(), 0.0, 1.0))
        return np.concatenate([data.site_xpos[self._eef_site], mat_to_euler(rot), [grip]]).astype(np.float32)

    def _obs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # np.array/astype copy, so no returned array aliases robosuite's observable or sim buffers.
        obs = {"state": self._state(), "joints": np.array(raw["robot0_joint_pos"], dtype=np.float32)}
        if self.privileged:
            obs["object"] = np.array(raw["object-state"], dtype=np.float32)
        if self.image_size is not None:
            obs["image"] = self._camera(self.image_size)
        return obs


def register_robosuite_envs() -> list[str]:
    """Register ``fleetrl/Robosuite-<task>-v0`` for every :data:`ROBOSUITE_TASKS` entry (skipping registered ids).

    No ``max_episode_steps``: the env truncates itself at its ``horizon``, which ``gym.make(..., horizon=N)`` can
    change; a registered TimeLimit would not follow it and would cut episodes short or be dead weight.
    """
    ids = []
    for name, kwargs in ROBOSUITE_TASKS.items():
        env_id = f"fleetrl/Robosuite-{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs=dict(kwargs))
        ids.append(env_id)
    return ids
