"""check_env: a correct toy env passes; each deliberately broken variant is caught with a message naming its fault."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec

from fleetrl.envs.check_env import CheckReport, EnvContractError, check_env, check_registered
from fleetrl.envs.gym_adapter import FleetEnv

HORIZON = 20


class PointEnv(gym.Env):
    """Correct toy env: a 2-D point mass driven towards the origin; obs ``{"state": [x, y, vx, vy]}`` (float32)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}
    size = 32

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-10.0, 10.0, (4,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.spec = EnvSpec(f"Toy{type(self).__name__}-v0", max_episode_steps=HORIZON)
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)
        self.t = 0

    def _start(self) -> np.ndarray:
        return self.np_random.uniform(-1.0, 1.0, 2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.concatenate([self.pos, self.vel]).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.pos, self.vel, self.t = self._start(), np.zeros(2), 0
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        self.vel = 0.8 * self.vel + 0.2 * a
        self.pos = np.clip(self.pos + 0.1 * self.vel, -5.0, 5.0)
        self.t += 1
        dist = float(np.linalg.norm(self.pos))
        success = dist < 0.1
        return self._obs(), -dist, success, self.t >= HORIZON, {"success": success}

    def render(self) -> Any:
        img = np.full((self.size, self.size, 3), 255, np.uint8)
        r, c = np.clip(((self.pos / 5.0 + 1.0) * 0.5 * (self.size - 1)).astype(int), 0, self.size - 1)
        img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = (255, 0, 0)
        return img


# -- broken variants, one fault each --------------------------------------------------------------------------------

class OutOfBounds(PointEnv):
    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.concatenate([self.pos * 100.0, self.vel]).astype(np.float32)}


class WrongDtype(PointEnv):
    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.concatenate([self.pos, self.vel])}


class MissingKey(PointEnv):
    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.observation_space = gym.spaces.Dict({"state": self.observation_space["state"],
                                                  "joints": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})


class NaNObs(PointEnv):
    def _obs(self) -> dict[str, np.ndarray]:
        obs = super()._obs()
        if self.t == 3:
            obs["state"][2] = np.nan
        return obs


class FloatSuccess(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {"success": float(info["success"])}


class NoSuccess(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {}


class ResetWithoutSuccess(PointEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, _ = super().reset(seed=seed)
        return obs, {}


class ArrayReward(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, np.array([reward]), terminated, truncated, info


class IntTerminated(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, Any, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, int(terminated), truncated, info


class WideActions(PointEnv):
    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


class CornerBlowsUp(PointEnv):
    """A gain of a / (1 - |a|): fine for random actions, infinite at the corners of the action box."""

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.vel = self.vel + 1e-3 * a / (1.0 - np.abs(a))
        return super().step(action)


class GlobalRandom(PointEnv):
    def _start(self) -> np.ndarray:
        return np.random.uniform(-1.0, 1.0, 2)


class SameStart(PointEnv):
    def _start(self) -> np.ndarray:
        return np.array([0.5, -0.5])


class DeclaredSameStart(SameStart):
    metadata = {**PointEnv.metadata, "deterministic_reset": True}


class SharedBuffer(PointEnv):
    """Writes every obs into one array it owns and returns that array each time."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.buf = np.zeros(4, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        self.buf[:] = np.concatenate([self.pos, self.vel])
        return {"state": self.buf}


class DoubleBuffer(PointEnv):
    """Alternates between two internal arrays: consecutive obs differ, but step t+2 overwrites step t's obs."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.bufs = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
        self.calls = 0

    def _obs(self) -> dict[str, np.ndarray]:
        self.calls += 1
        buf = self.bufs[self.calls % 2]
        buf[:] = np.concatenate([self.pos, self.vel])
        return {"state": buf}


class MutatesAction(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action *= 0.5
        return super().step(action)


class KeepsVelocity(PointEnv):
    """reset() re-draws the position but keeps the velocity of the previous episode."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        self.pos, self.t = self._start(), 0
        return self._obs(), {"success": False}


class KeepsStepCount(PointEnv):
    """reset() forgets to zero the step counter: the initial obs is right, the next episode truncates early."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        self.pos, self.vel = self._start(), np.zeros(2)
        return self._obs(), {"success": False}


class NeverEnds(PointEnv):
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, _, _, info = super().step(action)
        return obs, reward, False, False, {"success": False}


class FloatRender(PointEnv):
    def render(self) -> Any:
        return super().render().astype(np.float32) / 255.0


class ConstantRender(PointEnv):
    def render(self) -> Any:
        return np.zeros((self.size, self.size, 3), np.uint8)


class ImageObs(PointEnv):
    """Adds an ``image`` observation (the rendered frame)."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.observation_space = gym.spaces.Dict({
            "state": self.observation_space["state"],
            "image": gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)})

    def _obs(self) -> dict[str, np.ndarray]:
        return {**super()._obs(), "image": PointEnv.render(self)}


class BlankImageObs(ImageObs):
    def _obs(self) -> dict[str, np.ndarray]:
        return {**PointEnv._obs(self), "image": np.zeros((self.size, self.size, 3), np.uint8)}


# -- tests ----------------------------------------------------------------------------------------------------------

def test_correct_toy_env_passes() -> None:
    report = check_env(PointEnv)
    assert isinstance(report, CheckReport)
    assert report.env_id == "ToyPointEnv-v0"
    assert report.steps > 30 and report.notes == []


def test_correct_toy_env_with_image_obs_passes() -> None:
    assert check_env(ImageObs).notes == []


@pytest.mark.parametrize(("env_cls", "fault"), [
    (OutOfBounds, "outside observation_space['state'] bounds"),
    (WrongDtype, "has dtype float64, expected float32"),
    (MissingKey, "missing key(s) ['joints']"),
    (NaNObs, "obs['state'] has non-finite values (NaN/inf), first at index (2,)"),
    (FloatSuccess, "info['success'] must be a bool, got float"),
    (NoSuccess, "info has no 'success' key"),
    (ResetWithoutSuccess, "reset(seed=0): info has no 'success' key"),
    (ArrayReward, "reward must be a float or numpy scalar, got ndarray"),
    (IntTerminated, "terminated must be a bool, got int"),
    (WideActions, "action_space bounds must be -1..1"),
    (CornerBlowsUp, "(action all -1)"),
    (GlobalRandom, "two instances reset(seed=0) give different initial obs['state']"),
    (SameStart, "gives the same initial obs every time"),
    (SharedBuffer, "shares memory with the one returned by reset(seed=0)"),
    (DoubleBuffer, "obs['state'] returned by reset(seed=0) was modified later, by step 1"),
    (MutatesAction, "step() modified the action array"),
    (KeepsVelocity, "reset(seed=0) twice on the same instance gives different initial obs['state']"),
    (KeepsStepCount, "differs from the first episode"),
    (NeverEnds, "neither terminated nor truncated within its declared horizon max_episode_steps=20"),
    (FloatRender, "frame has dtype float32, expected uint8"),
    (ConstantRender, "render() frame is constant"),
    (BlankImageObs, "obs['image'] is constant"),
])
def test_fault_is_caught(env_cls: type[PointEnv], fault: str) -> None:
    with pytest.raises(EnvContractError) as info:
        check_env(env_cls)
    msg = str(info.value)
    assert msg.startswith(f"Toy{env_cls.__name__}-v0: "), msg
    assert fault in msg, msg


def test_fault_messages_name_the_step_and_seed() -> None:
    with pytest.raises(EnvContractError, match=r"step 2 after reset\(seed=0\) \(action random\)"):
        check_env(NaNObs)  # _obs sees t == 3 after the third step, i.e. step index 2
    with pytest.raises(EnvContractError, match=r"seeds \(4, 5\)"):
        check_env(SameStart, seeds=(4, 5))


def test_unregistered_env_is_named_by_class() -> None:
    class Anonymous(WrongDtype):
        def __init__(self, render_mode: str | None = None):
            super().__init__(render_mode)
            self.spec = None

    with pytest.raises(EnvContractError, match=r"^Anonymous: "):
        check_env(Anonymous)


def test_declared_deterministic_reset_is_skipped_with_a_note() -> None:
    report = check_env(DeclaredSameStart)
    assert any("randomised-reset check skipped" in n for n in report.notes), report.notes


def test_render_skipped_when_factory_takes_no_render_mode() -> None:
    report = check_env(lambda: ConstantRender())  # the constant frame goes unseen: no render env can be built
    assert any("render check skipped" in n for n in report.notes), report.notes


def test_every_env_is_closed_on_success_and_on_failure() -> None:
    made: list[PointEnv] = []
    closed: list[PointEnv] = []

    def tracked(base: type[PointEnv]) -> Any:
        class Tracked(base):  # type: ignore[valid-type,misc]
            def close(self) -> None:
                closed.append(self)
                super().close()

        def make(render_mode: str | None = None) -> PointEnv:
            made.append(Tracked(render_mode))
            return made[-1]

        return make

    check_env(tracked(PointEnv))
    assert len(made) == 3 and closed == made  # the two checked instances and the render one
    made.clear()
    closed.clear()
    with pytest.raises(EnvContractError):
        check_env(tracked(GlobalRandom))
    assert len(made) == 2 and closed == made


def test_real_gymnasium_env_through_fleet_adapter_passes() -> None:
    # Pendulum's render needs pygame, which is not a fleetrl dependency, so the render check is off here.
    report = check_env(lambda: FleetEnv(gym.make("Pendulum-v1")), check_render=False)
    assert report.env_id == "Pendulum-v1"
    assert report.notes == ["render check skipped: check_render=False"]
    # Steps of both instances: 30 each in lockstep, 30 replayed after the second reset, 30 per action corner, then
    # the 200-step horizon run (Pendulum never terminates; gym.make's TimeLimit truncates it).
    assert report.steps == 30 * 5 + 200


def test_real_mujoco_env_through_fleet_adapter_passes_with_render() -> None:
    # A MuJoCo env renders headless (MUJOCO_GL=egl, set in conftest), so this one exercises the rgb_array path.
    def make(render_mode: str | None = None) -> FleetEnv:
        return FleetEnv(gym.make("InvertedPendulum-v5", render_mode=render_mode, width=48, height=48))

    report = check_env(make)
    assert report.env_id == "InvertedPendulum-v5" and report.notes == []


def test_real_gymnasium_env_unadapted_fails_for_the_known_reason() -> None:
    # Raw Pendulum has a Box observation and a [-2, 2] action: not fleetrl's conventions until FleetEnv adapts it.
    with pytest.raises(EnvContractError, match=r"^Pendulum-v1: observation_space must be a gymnasium.spaces.Dict"):
        check_registered("Pendulum-v1", check_render=False)
