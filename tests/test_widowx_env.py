"""The simulated WidowX tabletop env: success criteria, episode semantics, rewards, seeding, observations, timing.

Success criteria are checked by putting the sim into states directly (objects placed, markers moved, physics
settled where contacts matter) and asking the task; episode semantics through ``gymnasium.make`` with the
registered ids, driven by a still arm or the scripted expert.
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import fleetrl.envs  # noqa: F401  (registers the gym ids)
from fleetrl.envs.registry import WIDOWX_IDS
from fleetrl.envs.widowx import tasks
from fleetrl.envs.widowx.arm import ARM_JOINTS
from fleetrl.envs.widowx.control import bridge_rpy
from fleetrl.envs.widowx.env import WidowXEnv
from fleetrl.envs.widowx.experts import ScriptedExpert
from fleetrl.envs.widowx.scene import TABLE_Z

TASK_NAMES = list(tasks.TASKS)
OBJECT_TASKS = [t for t in TASK_NAMES if tasks.TASKS[t].objects]
STILL_OPEN = np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32)  # no motion, gripper open
SIDE = np.array([0.3, 0.08])  # a table spot clear of the arm's start pose (TCP at 0.3, 0, 0.15)


def _settle(sim, steps: int = 300) -> None:
    """Let physics run (0.6 s by default) with the arm's servos holding it still."""
    mujoco.mj_step(sim.model, sim.data, nstep=steps)


def _forward(sim) -> None:
    mujoco.mj_forward(sim.model, sim.data)


def _qpos_obj(sim, name: str) -> np.ndarray:
    """An object's free-joint qpos (pos 3, quat 4), read straight from MuJoCo."""
    a = sim.model.joint(f"{name}_joint").qposadr[0]
    return sim.data.qpos[a:a + 7].copy()


def _contact_bodies_of(sim, body: str) -> set[str]:
    """Names of the bodies in contact with ``body``, read straight from MuJoCo's contact list."""
    m, d = sim.model, sim.data
    bid = m.body(body).id
    out = set()
    for c in d.contact[: d.ncon]:
        b1, b2 = m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]
        if bid in (b1, b2):
            out.add(m.body(b2 if b1 == bid else b1).name)
    return out


def _expert_episode(env: gym.Env, seed: int) -> list[tuple[dict, float, bool, bool, dict]]:
    """Run the scripted expert to the end of one episode; every step's (obs, reward, terminated, truncated, info)."""
    expert = ScriptedExpert(env.unwrapped.task)
    expert.reset(seed)
    obs, _ = env.reset(seed=seed)
    steps = []
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return steps


# --- success criteria, from states set directly ---------------------------------------------------------------


def test_reach_success_within_two_centimetres():
    env = WidowXEnv("reach")
    env.reset(seed=0)
    sim, task = env.sim, env.task
    tcp = sim.tcp_pos
    rng = np.random.default_rng(0)
    for _ in range(5):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        sim.set_marker("target", tcp + 0.015 * direction)
        _forward(sim)
        assert task.success(sim), "TCP 1.5 cm from the target must count as reached"
        sim.set_marker("target", tcp + 0.03 * direction)
        _forward(sim)
        assert not task.success(sim), "TCP 3 cm from the target must not count as reached"


def test_lift_success_needs_height_and_a_grasp():
    env = WidowXEnv("lift", terminate_on_success=False)
    obs, _ = env.reset(seed=0)
    sim, task = env.sim, env.task
    assert _qpos_obj(sim, "block")[2] == pytest.approx(TABLE_Z + 0.02, abs=2e-3)  # resting on the table
    assert not task.success(sim)

    # Held high by the expert: success, with both fingers touching the block.
    expert = ScriptedExpert(task)
    expert.reset(0)
    for _ in range(task.episode_steps):
        obs, _, _, _, info = env.step(expert.act(obs))
        if info["success"]:
            break
    assert info["success"] and task.success(sim)
    assert _qpos_obj(sim, "block")[2] - 0.02 - TABLE_Z >= 0.05
    assert {"left_finger_link", "right_finger_link"} <= _contact_bodies_of(sim, "block")

    # Let go: the block falls back to the table and the task is no longer done.
    for _ in range(4):
        _, _, _, _, info = env.step(STILL_OPEN)
    assert not info["success"] and not task.success(sim)
    assert _qpos_obj(sim, "block")[2] < TABLE_Z + 0.03

    # High but not held (teleported 6 cm up, nothing touching it): not a lift.
    env.reset(seed=1)
    sim.place("block", SIDE, z=TABLE_Z + 0.02 + 0.06)
    _forward(sim)
    assert sim.bottom_z("block") - TABLE_Z >= tasks.Lift.HEIGHT  # the height part alone would pass
    assert not _contact_bodies_of(sim, "block")
    assert not task.success(sim)


def test_put_on_plate_success():
    env = WidowXEnv("put_on_plate")
    env.reset(seed=0)
    sim, task = env.sim, env.task
    plate_top = TABLE_Z + 0.012
    assert not task.success(sim)  # after reset the block is on the table

    # Resting on the plate's centre (dropped from just above and settled): success.
    sim.place("plate", SIDE)
    sim.place("block", SIDE, z=plate_top + 0.02 + 0.002)
    _forward(sim)
    _settle(sim)
    assert _contact_bodies_of(sim, "block") == {"plate"}
    assert task.success(sim)

    # Beside the plate on the table: no.
    sim.place("plate", SIDE)
    sim.place("block", SIDE + [0.0, 0.1])
    _forward(sim)
    _settle(sim)
    assert "plate" not in _contact_bodies_of(sim, "block")
    assert not task.success(sim)

    # On the plate's rim, touching only the plate, with the block's centre just inside vs just beyond radius + 3 mm.
    # (Judged in the instant of contact: a block whose centre overhangs the rim tips off onto the table.)
    limit = 0.06 + 0.003  # the plate's radius + 3 mm (SimplerEnv's slack, as the task documents)
    for offset, expected in ((limit - 0.002, True), (limit + 0.002, False), (limit + 0.01, False)):
        sim.place("plate", SIDE)
        sim.place("block", SIDE + [offset, 0.0], z=plate_top + 0.02 - 0.0005)
        _forward(sim)
        assert _contact_bodies_of(sim, "block") == {"plate"}, offset
        assert task.success(sim) == expected, offset


def test_push_success():
    env = WidowXEnv("push")
    env.reset(seed=0)
    sim, task = env.sim, env.task
    assert not task.success(sim)  # the goal starts 10-15 cm from the block
    goal = SIDE + [0.02, 0.0]
    sim.set_marker("goal", np.array([goal[0], goal[1], TABLE_Z + 0.0006]))

    sim.place("block", goal)
    _forward(sim)
    _settle(sim, 50)
    assert task.success(sim)

    sim.place("block", goal + [0.0, 0.05])
    _forward(sim)
    _settle(sim, 50)
    assert not task.success(sim)

    sim.place("block", goal, z=TABLE_Z + 0.02 + 0.02)  # over the goal but in the air: not pushed there
    _forward(sim)
    assert not task.success(sim)


def test_stack_success():
    env = WidowXEnv("stack")
    env.reset(seed=0)
    sim, task = env.sim, env.task
    assert not task.success(sim)

    sim.place("yellow", SIDE)
    sim.place("green", SIDE, z=TABLE_Z + 0.05 + 0.02 + 0.002)
    _forward(sim)
    _settle(sim)
    assert _contact_bodies_of(sim, "green") == {"yellow"}
    assert task.success(sim)

    sim.place("yellow", SIDE)
    sim.place("green", SIDE + [0.0, 0.07])
    _forward(sim)
    _settle(sim)
    assert "yellow" not in _contact_bodies_of(sim, "green")
    assert not task.success(sim)


# --- episode semantics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_still_arm_is_truncated_at_the_task_length(task):
    env = gym.make(WIDOWX_IDS[task])
    obs, info = env.reset(seed=0)
    assert info == {"success": False}
    if task == "reach":  # precondition: the target is not already within reach of the start pose
        assert np.linalg.norm(obs["state"][:3] - obs["object"][:3]) > 0.05
    n = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(STILL_OPEN)
        n += 1
        assert terminated is False
        assert info["success"] is False and reward == 0.0
        if truncated:
            break
        assert n < 1000
    assert n == tasks.TASKS[task].episode_steps == env.spec.max_episode_steps
    env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_episode_terminates_on_success_with_sparse_reward(task):
    env = gym.make(WIDOWX_IDS[task])
    steps = _expert_episode(env, seed=1)
    *before, last = steps
    _, reward, terminated, truncated, info = last
    assert terminated is True and truncated is False
    assert reward == 1.0 and info["success"] is True
    assert len(steps) < tasks.TASKS[task].episode_steps
    for _, reward, terminated, truncated, info in before:
        assert reward == 0.0 and terminated is False and truncated is False
        assert info["success"] is False
    with pytest.raises(RuntimeError, match="reset"):
        env.step(STILL_OPEN)
    env.reset(seed=2)  # a reset makes the env usable again
    env.step(STILL_OPEN)
    env.close()


def test_without_terminate_on_success_the_episode_goes_on():
    env = gym.make(WIDOWX_IDS["lift"], terminate_on_success=False)
    expert = ScriptedExpert(env.unwrapped.task)
    expert.reset(0)
    obs, _ = env.reset(seed=0)
    first = None
    for i in range(tasks.Lift.episode_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        assert terminated is False
        assert isinstance(info["success"], bool)
        assert reward == (1.0 if info["success"] else 0.0)
        if info["success"] and first is None:
            first = i
        if first is not None and i >= first + 3:
            break
    assert first is not None, "the expert never lifted the block"
    assert info["success"]  # still held three steps later, and the episode still runs


# --- dense reward ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_dense_reward_is_in_unit_interval_and_one_exactly_on_success(task):
    dense = _expert_episode(gym.make(WIDOWX_IDS[task], reward_type="dense"), seed=3)
    sparse = _expert_episode(gym.make(WIDOWX_IDS[task]), seed=3)
    rewards = np.array([s[1] for s in dense])
    assert np.all((rewards >= 0.0) & (rewards <= 1.0))
    assert rewards[-1] == 1.0 and dense[-1][4]["success"] and dense[-1][2]
    assert np.all(rewards[:-1] < 1.0)
    assert rewards[:-1].max() > 0.0  # shaping actually says something before success
    # The reward type changes the reward only, not the dynamics.
    assert [s[4]["success"] for s in dense] == [s[4]["success"] for s in sparse]
    for (a, *_), (b, *_) in zip(dense, sparse, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_dense_reach_reward_grows_as_the_tcp_approaches_the_target():
    env = gym.make(WIDOWX_IDS["reach"], reward_type="dense")
    obs, _ = env.reset(seed=0)
    sim, task = env.unwrapped.sim, env.unwrapped.task
    tcp = sim.tcp_pos
    # Two static states: the closer target scores higher.
    sim.set_marker("target", tcp + [0.10, 0.0, 0.0])
    far = task.shaped_reward(sim)
    sim.set_marker("target", tcp + [0.05, 0.0, 0.0])
    near = task.shaped_reward(sim)
    assert 0.0 <= far < near < 1.0
    # Through the env: stepping towards a target 12 cm ahead raises the reward each step; backing off lowers it.
    sim.set_marker("target", tcp + [0.12, 0.0, 0.0])
    rewards = [env.step(np.array([0.5, 0, 0, 0, 0, 0, 1.0]))[1] for _ in range(3)]
    assert rewards[0] < rewards[1] < rewards[2] < 1.0
    back = env.step(np.array([-1.0, 0, 0, 0, 0, 0, 1.0]))[1]
    assert back < rewards[2]


# --- seeded placements ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_same_seed_gives_identical_observations(task):
    kwargs = {"image": True, "wrist_image": True, "image_size": 32} if task == "stack" else {}
    a, b = gym.make(WIDOWX_IDS[task], **kwargs), gym.make(WIDOWX_IDS[task], **kwargs)
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    a.reset(seed=8)
    obs_a2, _ = a.reset(seed=7)  # the same instance, re-seeded after another episode
    assert set(obs_a) == set(obs_b) == set(obs_a2)
    for k in obs_a:
        assert np.array_equal(obs_a[k], obs_b[k]), k
        assert np.array_equal(obs_a[k], obs_a2[k]), k
    # And the same actions keep them identical.
    action = np.array([0.3, -0.2, -0.4, 0.1, 0.0, 0.2, -1.0], np.float32)
    for _ in range(2):
        step_a, step_b = a.step(action), b.step(action)
        for k in step_a[0]:
            assert np.array_equal(step_a[0][k], step_b[0][k]), k
        assert step_a[1:] == step_b[1:]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_different_seeds_give_different_placements(task):
    env = gym.make(WIDOWX_IDS[task])
    objects = [env.reset(seed=s)[0]["object"] for s in range(5)]
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            assert not np.allclose(objects[i], objects[j], atol=1e-3), (i, j)


@pytest.mark.parametrize("task", OBJECT_TASKS)
def test_placements_lie_in_the_area_resting_and_apart(task):
    env = WidowXEnv(task)
    specs = env.task.objects
    low, high = tasks.PLACE_LOW - 1e-3, tasks.PLACE_HIGH + 1e-3
    for seed in range(15):
        env.reset(seed=seed)
        sim = env.sim
        for spec in specs:
            q = _qpos_obj(sim, spec.name)
            assert np.all(q[:2] >= low) and np.all(q[:2] <= high), (seed, spec.name, q[:2])
            assert q[2] == pytest.approx(TABLE_Z + spec.half_height, abs=2e-3), (seed, spec.name)
            assert np.abs(q[4:6]).max() < 1e-3, (seed, spec.name)  # upright: a rotation about z only
        if len(specs) == 2:
            a, b = (_qpos_obj(sim, s.name)[:2] for s in specs)
            # Footprints cannot overlap: centres further apart than the sum of the half diagonals.
            reach = sum(np.hypot(*s.size[:2]) if s.shape == "box" else s.size[0] for s in specs)
            assert np.linalg.norm(a - b) > reach, seed
            assert specs[1].name not in _contact_bodies_of(sim, specs[0].name), seed
        if task == "push":
            goal = sim.marker_pos("goal")
            assert np.all(goal[:2] >= low) and np.all(goal[:2] <= high), seed
            assert 0.10 - 1e-3 <= np.linalg.norm(goal[:2] - _qpos_obj(sim, "block")[:2]) <= 0.15 + 1e-3, seed


def test_reach_targets_lie_in_the_reach_area():
    env = WidowXEnv("reach")
    for seed in range(20):
        env.reset(seed=seed)
        target = env.sim.marker_pos("target")
        assert np.all(target[:2] >= tasks.PLACE_LOW - 0.02) and np.all(target[:2] <= tasks.PLACE_HIGH + 0.04)
        assert TABLE_Z + 0.04 <= target[2] <= 0.14


# --- observations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["reach", "put_on_plate", "push"])
def test_state_joints_and_object_match_the_sim(task):
    env = gym.make(WIDOWX_IDS[task])
    obs, _ = env.reset(seed=4)
    base = env.unwrapped
    m, d = base.sim.model, base.sim.data
    arm_q = [m.joint(j.name).qposadr[0] for j in ARM_JOINTS]
    assert obs["state"][6] == pytest.approx(1.0, abs=0.01)  # gripper open after reset
    for action in (np.array([0.4, -0.3, -0.5, 0.2, -0.1, 0.3, -1.0]), np.array([0.0, 0.2, 0.3, 0.0, 0.0, -0.2, -1.0])):
        assert set(obs) == {"state", "joints", "object"}
        assert env.observation_space.contains(obs)
        tcp = m.site("tcp").id
        np.testing.assert_allclose(obs["state"][:3], d.site_xpos[tcp], atol=1e-6)
        np.testing.assert_allclose(obs["state"][3:6], bridge_rpy(d.site_xmat[tcp].reshape(3, 3)), atol=1e-5)
        np.testing.assert_allclose(obs["joints"], d.qpos[arm_q], atol=1e-6)
        expected = [_qpos_obj(base.sim, o.name) for o in base.task.objects]
        expected += [d.mocap_pos[m.body(mk.name).mocapid[0]] for mk in base.task.markers]
        np.testing.assert_allclose(obs["object"], np.concatenate(expected), atol=1e-6)
        assert obs["object"].shape == (7 * len(base.task.objects) + 3 * len(base.task.markers),)
        obs, *_ = env.step(action)
    obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert obs["state"][6] < 0.1  # closed on nothing


def test_no_images_and_no_renderer_unless_asked():
    env = gym.make(WIDOWX_IDS["lift"])
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(STILL_OPEN)
    assert set(obs) == {"state", "joints", "object"}
    assert set(env.observation_space.spaces) == {"state", "joints", "object"}
    assert env.unwrapped._renderers == {}
    assert env.render() is None
    assert env.unwrapped._renderers == {}
    unprivileged = gym.make(WIDOWX_IDS["lift"], privileged=False)
    obs, _ = unprivileged.reset(seed=0)
    assert set(obs) == {"state", "joints"}


@pytest.mark.parametrize("size", [64, 96])
def test_image_observation(size):
    env = gym.make(WIDOWX_IDS["lift"], image=True, image_size=size, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    first = obs["image"]
    assert first.dtype == np.uint8 and first.shape == (size, size, 3)
    assert first.std() > 10, "the picture is (nearly) constant"
    assert env.observation_space["image"].shape == (size, size, 3)
    for _ in range(3):
        obs, *_ = env.step(np.array([0.5, 0.5, -0.5, 0, 0, 0.5, 1.0]))
    frame = env.render()
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, obs["image"])  # render() shows what the observation shows
    moved = np.abs(obs["image"].astype(int) - first.astype(int)).max(axis=2)
    assert (moved > 30).sum() > 20, "the picture did not change when the arm moved"
    assert len(env.unwrapped._renderers) == 1  # one renderer serves both at the same size
    assert "wrist_image" not in obs
    env.close()
    assert env.unwrapped._renderers == {}


def test_wrist_image_observation():
    env = gym.make(WIDOWX_IDS["stack"], wrist_image=True, image_size=48)
    obs, _ = env.reset(seed=0)
    assert "image" not in obs
    first = obs["wrist_image"]
    assert first.dtype == np.uint8 and first.shape == (48, 48, 3)
    assert first.std() > 10
    for _ in range(3):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]))  # turn the wrist
    assert not np.array_equal(obs["wrist_image"], first)
    assert env.observation_space.contains(obs)


def test_observations_are_not_aliased_between_steps():
    env = gym.make(WIDOWX_IDS["stack"], image=True, wrist_image=True, image_size=32)
    obs0, _ = env.reset(seed=0)
    saved = {k: v.copy() for k, v in obs0.items()}
    obs1, *_ = env.step(np.array([0.6, 0.6, -0.6, 0.3, 0.0, 0.5, -1.0]))
    obs2, *_ = env.step(np.array([-0.6, -0.6, 0.6, 0.0, 0.3, -0.5, 1.0]))
    for k in saved:
        assert np.array_equal(obs0[k], saved[k]), f"{k} of an earlier step changed"
        assert not np.shares_memory(obs0[k], obs1[k]) and not np.shares_memory(obs1[k], obs2[k]), k
        if k != "object":  # the blocks stay put; the arm and so everything else moves
            assert not np.array_equal(obs1[k], obs0[k]), k
    obs1["state"][:] = 0  # writing into a returned array does not reach the sim
    np.testing.assert_allclose(env.unwrapped.sim.state()[:3], obs2["state"][:3], atol=1e-6)


# --- control timing -------------------------------------------------------------------------------------------


def test_one_step_is_a_fifth_of_a_second_of_physics():
    env = gym.make(WIDOWX_IDS["reach"])
    env.reset(seed=0)
    d, m = env.unwrapped.sim.data, env.unwrapped.sim.model
    assert m.opt.timestep == pytest.approx(0.002)
    for action in (STILL_OPEN, np.array([1.0, 1, 1, 1, 1, 1, -1])):
        t0 = d.time
        env.step(action)
        assert d.time - t0 == pytest.approx(0.2, abs=1e-9)


# --- errors ---------------------------------------------------------------------------------------------------


def test_unknown_task_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match="fly_away") as err:
        WidowXEnv("fly_away")
    for name in TASK_NAMES:
        assert name in str(err.value)


def test_bad_reward_type():
    with pytest.raises(ValueError, match="reward_type"):
        WidowXEnv("reach", reward_type="shaped")


@pytest.mark.parametrize("action", [np.zeros(6), np.zeros(8), np.array([0, 0, np.nan, 0, 0, 0, 1.0]),
                                    np.array([0, 0, 0, np.inf, 0, 0, 1.0])])
def test_bad_action_is_refused(action):
    env = gym.make(WIDOWX_IDS["reach"])
    env.reset(seed=0)
    t0 = env.unwrapped.sim.data.time
    with pytest.raises(ValueError, match="action"):
        env.step(action)
    assert env.unwrapped.sim.data.time == t0  # nothing was simulated
