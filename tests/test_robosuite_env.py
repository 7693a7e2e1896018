"""RobosuiteEnv against real robosuite: spaces, action conventions, time limit, success, seeding, images, registry."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Iterator  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# robosuite is a dependency of fleetrl: if it is missing the tests must fail, not skip.
import robosuite  # noqa: E402, F401

from fleetrl.envs.robosuite_env import ROBOSUITE_TASKS, RobosuiteEnv, register_robosuite_envs  # noqa: E402


def _act(**dims: float) -> np.ndarray:
    """A 7-D action, zero except the named dims (x y z roll pitch yaw grip)."""
    names = ["x", "y", "z", "roll", "pitch", "yaw", "grip"]
    a = np.zeros(7, np.float32)
    for k, v in dims.items():
        a[names.index(k)] = v
    return a


@pytest.fixture(scope="module")
def lift() -> Iterator[RobosuiteEnv]:
    env = RobosuiteEnv("Lift")
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_image() -> Iterator[RobosuiteEnv]:
    env = RobosuiteEnv("Lift", image_size=64, render_mode="rgb_array")
    yield env
    env.close()


def _assert_obs(env: RobosuiteEnv, obs: dict[str, np.ndarray]) -> None:
    assert set(obs) == set(env.observation_space.spaces)
    for key, space in env.observation_space.spaces.items():
        assert obs[key].dtype == space.dtype, key
        assert obs[key].shape == space.shape, key
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("task", list(ROBOSUITE_TASKS))
def test_spaces_honoured_by_reset_and_step(task: str) -> None:
    env = RobosuiteEnv(task)
    try:
        assert env.horizon == ROBOSUITE_TASKS[task]["horizon"]
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        assert set(env.observation_space.spaces) == {"state", "joints", "object"}
        assert env.observation_space["state"].shape == (7,)
        assert env.observation_space["joints"].shape == (7,)
        obs, info = env.reset(seed=0)
        assert info == {"success": False}
        _assert_obs(env, obs)
        assert 0.0 <= obs["state"][6] <= 1.0
        assert np.all(np.abs(obs["state"][3:6]) < 0.5), "home pose should be near gripper-down (rpy 0)"
        rng = np.random.default_rng(0)
        for _ in range(3):
            # Out-of-range actions are clipped, not rejected.
            obs, reward, terminated, truncated, info = env.step(rng.uniform(-2, 2, 7).astype(np.float32))
            _assert_obs(env, obs)
            assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
            assert type(info["success"]) is bool
            assert not truncated
        # Not asked for pixels: robosuite must not have created a GL context.
        assert env._env.sim._render_context_offscreen is None
    finally:
        env.close()


def test_privileged_false_drops_object() -> None:
    env = RobosuiteEnv("Door", privileged=False)
    try:
        obs, _ = env.reset(seed=0)
        assert set(obs) == {"state", "joints"}
        _assert_obs(env, obs)
    finally:
        env.close()


def test_gripper_plus_one_opens_minus_one_closes(lift: RobosuiteEnv) -> None:
    obs, _ = lift.reset(seed=1)
    start = obs["state"][6]
    assert 0.2 < start < 0.8  # robosuite starts the Panda fingers half open
    opened = [lift.step(_act(grip=1.0))[0]["state"][6] for _ in range(12)]
    assert opened[0] > start and opened[-1] > 0.9
    closed = [lift.step(_act(grip=-1.0))[0]["state"][6] for _ in range(12)]
    assert closed[0] < opened[-1] and closed[-1] < 0.1


@pytest.mark.parametrize("axis", range(6))
def test_positive_action_increases_matching_state(lift: RobosuiteEnv, axis: int) -> None:
    obs, _ = lift.reset(seed=2)
    before = obs["state"][:6].copy()
    action = np.zeros(7, np.float32)
    action[axis] = 1.0 if axis < 3 else 0.5
    for _ in range(4):
        obs, *_ = lift.step(action)
    delta = obs["state"][:6] - before
    group = slice(0, 3) if axis < 3 else slice(3, 6)
    assert delta[axis] > (0.02 if axis < 3 else 0.1), delta
    assert np.argmax(np.abs(delta[group])) == axis % 3, delta


def test_truncates_exactly_at_horizon() -> None:
    env = RobosuiteEnv("Lift", horizon=5)
    try:
        for _ in range(2):  # the count restarts on reset
            env.reset(seed=0)
            flags = [env.step(_act())[2:4] for _ in range(5)]
            assert flags == [(False, False)] * 4 + [(False, True)]
    finally:
        env.close()


def _lift_cube(env: RobosuiteEnv, height: float) -> None:
    """Put Lift's cube `height` m above the table top (keeping its x, y, orientation) in the live sim."""
    rs = env._env
    joint = rs.cube.joints[0]
    qpos = rs.sim.data.get_joint_qpos(joint).copy()
    qpos[2] = rs.model.mujoco_arena.table_offset[2] + height
    rs.sim.data.set_joint_qpos(joint, qpos)
    rs.sim.forward()


@pytest.mark.parametrize("terminate", [True, False])
def test_success_when_cube_is_lifted(terminate: bool) -> None:
    env = RobosuiteEnv("Lift", terminate_on_success=terminate)
    try:
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step(_act())
        assert info["success"] is False and reward == 0.0 and not terminated
        # robosuite's own success test (cube above table + 4 cm) after a real physics step; 0.2 m leaves margin
        # for the ~1 cm the cube falls during the step.
        _lift_cube(env, 0.2)
        _, reward, terminated, truncated, info = env.step(_act())
        assert info["success"] is True
        assert reward == 1.0  # sparse reward
        assert terminated is terminate and truncated is False
    finally:
        env.close()


def test_seeding(lift: RobosuiteEnv) -> None:
    def rollout(seed: int | None) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        obs, _ = lift.reset(seed=seed)
        actions = np.random.default_rng(123).uniform(-1, 1, (15, 7)).astype(np.float32)
        traj, rewards = [obs], []
        for a in actions:
            obs, r, *_ = lift.step(a)
            traj.append(obs)
            rewards.append(r)
        return traj, rewards

    a, ra = rollout(7)
    b, _ = rollout(8)
    c, rc = rollout(7)  # after another seed's episode: no state may leak between episodes
    for oa, oc in zip(a, c, strict=True):
        for key in oa:
            np.testing.assert_array_equal(oa[key], oc[key])
    assert ra == rc
    # object-state starts with the cube position: different seeds place it differently.
    assert np.linalg.norm(a[0]["object"][:2] - b[0]["object"][:2]) > 1e-3
    # No seed continues the stream: successive resets differ.
    placements = [lift.reset()[0]["object"][:3] for _ in range(3)]
    assert not np.allclose(placements[0], placements[1]) and not np.allclose(placements[1], placements[2])


def test_observations_never_alias(lift_image: RobosuiteEnv) -> None:
    obs0, _ = lift_image.reset(seed=3)
    kept0 = {k: v.copy() for k, v in obs0.items()}
    obs1, *_ = lift_image.step(_act(x=1.0, grip=1.0))
    kept1 = {k: v.copy() for k, v in obs1.items()}
    obs2, *_ = lift_image.step(_act(y=1.0, grip=-1.0))
    for key in obs0:
        np.testing.assert_array_equal(obs0[key], kept0[key])
        np.testing.assert_array_equal(obs1[key], kept1[key])
        assert not np.shares_memory(obs1[key], obs2[key]), key
    assert not np.array_equal(obs1["state"], obs2["state"])  # the arm moved, so equality above is meaningful


def test_image_observation_and_render(lift_image: RobosuiteEnv) -> None:
    obs, _ = lift_image.reset(seed=4)
    _assert_obs(lift_image, obs)
    img = obs["image"]
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    assert img.std() > 10.0
    # Upright agentview: the white table fills the bottom of the frame, the robot and backdrop the top.
    assert img[-16:].mean() > img[:16].mean() + 20
    frame = lift_image.render()
    assert frame is not None and frame.dtype == np.uint8 and frame.shape == (256, 256, 3) and frame.std() > 10.0
    assert frame[-64:].mean() > frame[:64].mean() + 20
    assert not np.shares_memory(frame, lift_image.render())
    obs2, *_ = lift_image.step(_act(z=-1.0))
    assert not np.array_equal(obs2["image"], img)  # frames follow the sim


def test_render_none_without_render_mode(lift: RobosuiteEnv) -> None:
    assert lift.render() is None


def test_unknown_task_names_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'Nope'.*Lift, Stack, PickPlaceCan, Door"):
        RobosuiteEnv("Nope")


def test_gym_make_registered_ids() -> None:
    ids = register_robosuite_envs()
    assert register_robosuite_envs() == ids  # idempotent
    assert ids == [f"fleetrl/Robosuite-{t}-v0" for t in ("Lift", "Stack", "PickPlaceCan", "Door")]
    for env_id in ids:
        spec = gym.spec(env_id)
        assert spec.max_episode_steps is None  # the env truncates itself at its horizon
        assert spec.kwargs["horizon"] == ROBOSUITE_TASKS[env_id.split("-")[1]]["horizon"]
    env = gym.make("fleetrl/Robosuite-Stack-v0", horizon=3)
    try:
        assert env.unwrapped.horizon == 3 and env.unwrapped.task == "Stack"
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and info["success"] is False
        truncs = [env.step(env.action_space.sample())[3] for _ in range(3)]
        assert truncs == [False, False, True]
    finally:
        env.close()


def test_same_keywords_as_the_widowx_env():
    """``image`` and ``reward_type`` mean what they mean for WidowXEnv, so env.kwargs carry over."""
    env = RobosuiteEnv("Lift", image=True, reward_type="dense", horizon=5)
    try:
        assert env.observation_space["image"].shape == (128, 128, 3)
        obs, _ = env.reset(seed=0)
        _, reward, *_ = env.step(np.zeros(7, np.float32))
        assert 0.0 < reward < 1.0  # robosuite's shaped reward: reaching term only, the cube not yet lifted
    finally:
        env.close()
    with pytest.raises(ValueError, match="reward_type"):
        RobosuiteEnv("Lift", reward_type="shaped")


def test_render_size_sets_the_frame_size():
    env = RobosuiteEnv("Lift", render_mode="rgb_array", render_size=64, horizon=5)
    try:
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1
    finally:
        env.close()
