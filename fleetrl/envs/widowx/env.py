"""The simulated WidowX tabletop as a gymnasium env, with the real robot's action and observation conventions.

- Action: ``Box(-1, 1, (7,))``: Δx, Δy, Δz (±0.05 m), Δroll, Δpitch, Δyaw (±0.25 rad, base-frame axes through the
  TCP), gripper target (-1 closed ... +1 open). One step is 0.2 s (5 Hz) of physics at 500 Hz.
- Observation: a dict with ``state`` (the real robot's 7-D proprio), ``joints`` (6 arm joint angles), ``object``
  (privileged object and goal state, when ``privileged``), ``image`` (third-person camera, uint8 HxWx3, when
  ``image``) and ``wrist_image`` (when ``wrist_image``). Cameras are rendered only when asked, by one offscreen
  renderer per env (EGL or OSMesa, per ``MUJOCO_GL``), shadows off.
- Reward: sparse (1 on a success step, else 0) or the task's dense shaping (``reward_type="dense"``).
- ``terminated`` is True on success when ``terminate_on_success`` (the task is done: an absorbing state);
  the time limit (the registered ``max_episode_steps``, the task's Bridge-like length) is a truncation, added by
  gymnasium's ``TimeLimit``. ``info["success"]`` is reported at every step.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from fleetrl.envs.widowx.sim import TabletopSim
from fleetrl.envs.widowx.tasks import TASKS, Task

#: Bounds of the 7-D state: a box around the workspace, rpy ranges, gripper opening.
STATE_LOW = np.array([-1.0, -1.0, -1.0, -np.pi, -np.pi / 2, -np.pi, 0.0], np.float32)
STATE_HIGH = np.array([1.0, 1.0, 1.0, np.pi, np.pi / 2, np.pi, 1.0], np.float32)


#: Envs with open renderers. GL contexts must be released before MuJoCo's own exit hook terminates the EGL
#: display, or the renderers' finalizers print EGL errors at exit when a program forgot ``env.close()``.
_OPEN_RENDERERS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_renderers() -> None:
    for env in list(_OPEN_RENDERERS):
        env.close()


def _track_renderer(env: WidowXEnv) -> None:
    global _exit_hook_registered
    _OPEN_RENDERERS.add(env)
    if not _exit_hook_registered:
        # Registered after the first renderer exists, i.e. after mujoco.egl registered its hook: atexit runs
        # hooks last-in first-out, so ours closes the contexts before the display goes.
        atexit.register(_close_renderers)
        _exit_hook_registered = True


class WidowXEnv(gym.Env):
    """A WidowX 250 at a table doing one Bridge-style task (see :mod:`fleetrl.envs.widowx.tasks`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, task: str = "reach", *, reward_type: str = "sparse", privileged: bool = True,
                 image: bool = False, wrist_image: bool = False, image_size: int = 128,
                 terminate_on_success: bool = True, render_mode: str | None = None, render_size: int | None = None):
        if task not in TASKS:
            raise ValueError(f"task: unknown WidowX task {task!r}; known: {sorted(TASKS)}")
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type: must be 'sparse' or 'dense', got {reward_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: only 'rgb_array' is supported, got {render_mode!r}")
        # render() draws at the observation image size unless told otherwise, so one renderer serves both.
        render_size = image_size if render_size is None else render_size
        if not 16 <= int(image_size) <= 1024 or not 16 <= int(render_size) <= 1024:
            raise ValueError(f"image_size / render_size: must be in [16, 1024], got {image_size} / {render_size}")
        self.task: Task = TASKS[task]()
        self.reward_type, self.terminate_on_success = reward_type, terminate_on_success
        self.privileged, self.image, self.wrist_image = privileged, image, wrist_image
        self.image_size, self.render_size, self.render_mode = int(image_size), int(render_size), render_mode
        self.sim = TabletopSim(self.task.objects, self.task.markers, max(self.image_size, self.render_size))
        spaces: dict[str, gym.spaces.Space] = {
            "state": gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32),
            "joints": gym.spaces.Box(-2 * np.pi, 2 * np.pi, (6,), np.float32),
        }
        if privileged:
            spaces["object"] = gym.spaces.Box(-np.inf, np.inf, (self.task.object_dim,), np.float32)
        for key, on in (("image", image), ("wrist_image", wrist_image)):
            if on:
                spaces[key] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._scene_option = mujoco.MjvOption()
        self._scene_option.sitegroup[:] = 0  # hide the TCP marker in pictures
        self._needs_reset = True

    # --- gymnasium API ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.sim.reset_arm()
        self.task.reset(self.sim, self.np_random)
        self.sim.finish_reset()
        self._needs_reset = False
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("step() called before reset() (or after the episode terminated)")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action: expected 7 finite numbers, got shape {a.shape}: {a}")
        self.sim.step(a)
        success = self.task.success(self.sim)
        if self.reward_type == "dense":
            reward = self.task.shaped_reward(self.sim)
        else:
            reward = 1.0 if success else 0.0
        terminated = bool(success and self.terminate_on_success)
        self._needs_reset = terminated
        return self._obs(), float(reward), terminated, False, {"success": bool(success)}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._camera("scene", self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # --- observations -----------------------------------------------------------------------------------------
    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self.sim.state(), "joints": self.sim.joints()}
        if self.privileged:
            obs["object"] = self.task.object_obs(self.sim)
        if self.image:
            obs["image"] = self._camera("scene", self.image_size)
        if self.wrist_image:
            obs["wrist_image"] = self._camera("wrist", self.image_size)
        return obs

    def _camera(self, camera: str, size: int) -> np.ndarray:
        """One camera's picture. A renderer per picture size; with the defaults (observation images only, or
        ``render()`` only) that is one renderer per env."""
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.sim.model, size, size)
            _track_renderer(self)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.update_scene(self.sim.data, camera=camera, scene_option=self._scene_option)
        return renderer.render().copy()
