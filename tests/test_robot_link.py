"""The robot link over real sockets: `fleetrl robot-server --backend sim` in its own process, the client env, a
legacy Bridge server stand-in (lz4 + pickle, slow init, missing replies), hostile messages, watchdog and e-stop."""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time

import lz4.frame
import msgpack
import numpy as np
import pytest
import zmq

from fleetrl.envs.robot_client import EpisodeAborted, RobotLinkConfig, WidowXRobotEnv
from fleetrl.envs.widowx.env import WidowXEnv
from fleetrl.robot import wire
from fleetrl.robot.backends import SimBackend
from fleetrl.robot.server import BRIDGE_HASH, RobotServer, Safety
from fleetrl.testing import free_port

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def served_sim():
    """`fleetrl robot-server --backend sim` as a separate process, with a token."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleetrl.cli", "robot-server", "--backend", "sim", "--port",
                             str(port), "--token", "s3cret"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")))
    cfg = RobotLinkConfig(server=f"127.0.0.1:{port}", token="s3cret", image_size=64)
    deadline = time.monotonic() + 60
    while True:  # wait until it answers the handshake
        env = WidowXRobotEnv(cfg)
        try:
            env.handshake()
            env.close()
            break
        except ConnectionError:
            env.close()
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "robot server did not come up"
    yield cfg
    proc.terminate()
    proc.wait(10)


def test_episode_over_the_socket_matches_the_sim_conventions(served_sim):
    env = WidowXRobotEnv(served_sim)
    sim = WidowXEnv("reach", privileged=False, image=True, image_size=64)
    try:
        obs, _ = env.reset()
        ref, _ = sim.reset(seed=0)
        assert set(obs) == set(ref) == {"state", "joints", "image"}
        for k in obs:
            assert obs[k].shape == ref[k].shape and obs[k].dtype == ref[k].dtype, k
        assert env.observation_space.contains(obs)
        np.testing.assert_allclose(obs["state"], ref["state"], atol=1e-3)  # same start pose
        # +x for 5 steps moves the TCP forward by about 5 x 5 cm, as the sim env does.
        start = obs["state"][:3].copy()
        for _ in range(5):
            obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        assert obs["state"][0] - start[0] > 0.12 and abs(obs["state"][1] - start[1]) < 0.02
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert obs["image"].std() > 0  # a real rendered frame
        # A client without a camera asks for state and joints only: the server sends no frame.
        lean = _raw(served_sim, wire.encode({"type": "obs", "token": "s3cret", "keys": ["state", "joints"]}))
        assert lean["ok"] and "image" not in lean and np.allclose(lean["state"], obs["state"], atol=1e-4)
    finally:
        env.close()
        sim.close()


def _raw(cfg: RobotLinkConfig, payload: bytes) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{cfg.server}")
    try:
        sock.send(payload)
        return wire.decode(sock.recv())
    finally:
        sock.close()


@pytest.mark.parametrize("message, expected", [
    ({"type": "hash"}, "token: missing or wrong"),
    ({"type": "hash", "token": "wrong"}, "token: missing or wrong"),
    ({"type": "obs", "token": "s3cret", "extra": 1}, "unknown key(s) ['extra']"),
    ({"type": "act", "token": "s3cret", "key": "fly", "payload": {}}, "key: unknown action 'fly'"),
    ({"type": "act", "token": "s3cret", "key": "step_action", "payload": {"action": "left"}},
     "payload.action: expected a numeric array"),
    ({"type": "act", "token": "s3cret", "key": "step_action", "payload": {"action": np.zeros(3)}},
     "payload.action: expected (7,) finite numbers"),
    ({"type": "act", "token": "s3cret", "key": "step_action", "payload": {"action": np.full(7, np.nan)}},
     "finite"),
    ({"type": "act", "token": "s3cret", "key": "init", "payload": {"image_size": "big"}}, "payload.image_size"),
    ({"type": "obs", "token": "s3cret", "keys": "image"}, "keys: expected a list of observation names"),
])
def test_malformed_requests_get_an_error_naming_the_field(served_sim, message, expected):
    reply = _raw(served_sim, wire.encode(message))
    assert reply["ok"] is False and expected in reply["error"], reply


def test_hostile_payloads_are_refused_and_the_server_keeps_serving(served_sim):
    token = served_sim.token
    pickled = lz4.frame.compress(pickle.dumps({"type": "hash"}))
    assert "never unpickles" in _raw(served_sim, pickled)["error"]
    assert "never unpickles" in _raw(served_sim, pickle.dumps({"type": "hash"}))["error"]
    assert "not a valid message" in _raw(served_sim, b"\xc1\xff garbage")["error"]
    # An array header claiming far more elements than allowed, and one whose bytes do not match its shape.
    lie = {"type": "act", "token": token, "key": "step_action",
           "payload": {"action": {"__nd__": "float64", "shape": [100000, 100000], "data": b"\x00" * 8}}}
    assert "exceeds" in _raw(served_sim, msgpack.packb(lie))["error"]
    lie["payload"]["action"]["shape"] = [7]
    assert "not 7 x float64 bytes" in _raw(served_sim, msgpack.packb(lie))["error"]
    assert "not a valid message" in _raw(served_sim, msgpack.packb({"type": "obs", 1: 2}))["error"]  # int key
    assert _raw(served_sim, msgpack.packb([1, 2, 3]))["error"].startswith("a message must be a map")
    # Another client is still served normally.
    assert _raw(served_sim, wire.encode({"type": "hash", "token": token}))["payload"] == BRIDGE_HASH


@pytest.fixture
def local_server():
    server = RobotServer(SimBackend("reach"), port=0, safety=Safety(watchdog_s=0.6))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, RobotLinkConfig(server=f"127.0.0.1:{server.port}", image_size=32)
    server.stop()
    thread.join(5)


def test_watchdog_holds_the_arm_and_refuses_to_resume_until_reset(local_server):
    server, cfg = local_server
    env = WidowXRobotEnv(cfg)
    env.reset()
    for _ in range(3):
        obs, *_ = env.step(np.array([0.5, 0.5, 0, 0, 0, 0, 1], np.float32))
    time.sleep(1.5)  # the client goes silent mid-episode
    assert server.state == "holding"
    held = server.backend.env.sim.state()[:3].copy()
    time.sleep(1.0)  # the server keeps servoing the held pose
    np.testing.assert_allclose(server.backend.env.sim.state()[:3], held, atol=1e-3)
    with pytest.raises(EpisodeAborted, match="watchdog"):
        env.step(np.zeros(7, np.float32))
    obs, _ = env.reset()  # a new episode is allowed
    env.step(np.array([0.2, 0, 0, 0, 0, 0, 1], np.float32))
    assert server.state == "active"
    env.close()


def test_estop_refuses_motion_until_cleared_and_reset(local_server):
    server, cfg = local_server
    env = WidowXRobotEnv(cfg)
    env.reset()
    assert _raw(cfg, wire.encode({"type": "act", "key": "estop", "payload": {}}))["ok"] is True
    with pytest.raises(EpisodeAborted, match="e-stop"):
        env.step(np.zeros(7, np.float32))
    with pytest.raises(EpisodeAborted, match="e-stop"):
        env.reset()
    assert _raw(cfg, wire.encode({"type": "act", "key": "clear_estop", "payload": {}}))["ok"] is True
    env.reset()
    env.step(np.zeros(7, np.float32))
    env.close()


def test_steps_are_clipped_to_the_limits_and_the_workspace(local_server):
    server, cfg = local_server
    env = WidowXRobotEnv(cfg)
    obs, _ = env.reset()
    reply = _raw(cfg, wire.encode({"type": "act", "key": "step_action",
                                   "payload": {"action": np.array([0.5, 0, 0, 0, 0, 0, 1.0])}}))
    assert reply["ok"] and reply["status"] == 1
    after = server.backend.env.sim.state()
    assert after[0] - obs["state"][0] < 0.05 + 0.005  # 50 cm asked, one step's 5 cm taken
    for _ in range(15):  # push far out of the box: the target stops at its edge
        env.step(np.array([1, 0, 1, 0, 0, 0, 1], np.float32))
    state = server.backend.env.sim.state()
    assert state[0] <= Safety().workspace_high[0] + 0.01 and state[2] <= Safety().workspace_high[2] + 0.01
    env.close()


class _BridgeStandIn:
    """A minimal legacy Bridge server: REP socket, lz4 + pickle, slow init, a step whose reply never comes."""

    def __init__(self, init_delay_s: float, drop_step: int, moves: bool = True):
        self.moves = moves
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.REP)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.init_delay_s, self.drop_step = init_delay_s, drop_step
        self.steps, self.actions = 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            msg = pickle.loads(lz4.frame.decompress(self.sock.recv()))
            if msg["type"] == "hash":
                reply = {"success": True, "payload": BRIDGE_HASH}
            elif msg["type"] == "obs":
                x = 0.3 + 0.01 * self.steps * self.moves
                reply = {"image": np.full((1, 3 * 16 * 16), 0.5, np.float32),
                         "state": np.array([x, 0, 0.15, 0, 0, 0, 1.0]),
                         "full_image": b"jpeg"}
            elif msg["key"] == "init":
                time.sleep(self.init_delay_s)  # longer than the client's 800 ms: its reply is missed
                reply = {"status": 1}
            elif msg["key"] == "step_action":
                self.steps += 1
                self.actions.append(np.asarray(msg["payload"]["action"]))
                if self.steps == self.drop_step:
                    time.sleep(1.2)  # the reply comes too late: the client has given up on it
                reply = {"status": 1}
            else:
                reply = {"status": 1}
            self.sock.send(lz4.frame.compress(pickle.dumps(reply)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(linger=0)


def test_legacy_bridge_server_slow_init_and_a_missing_reply():
    bridge = _BridgeStandIn(init_delay_s=1.5, drop_step=3)
    env = WidowXRobotEnv(RobotLinkConfig(server=f"127.0.0.1:{bridge.port}", legacy_pickle=True, image_size=16,
                                         init_timeout_s=10))
    try:
        assert "joints" not in env.observation_space.spaces  # Bridge servers send no joint angles
        obs, _ = env.reset()  # init's reply is missed; observations are polled until the server answers
        assert obs["image"].dtype == np.uint8 and obs["image"].shape == (16, 16, 3)
        assert np.all(obs["image"] == 128)  # 0.5 in [0, 1], channel-first -> uint8 HWC
        env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        with pytest.raises(EpisodeAborted, match="not re-sent"):
            env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        time.sleep(1.0)
        assert bridge.steps == 3  # never retried
        np.testing.assert_allclose(bridge.actions[0], [0.05, 0, 0, 0, 0, 0, 1.0])  # metric Bridge action
    finally:
        env.close()
        bridge.close()


def test_an_arm_that_ignores_its_commands_aborts_the_episode():
    """A Bridge server drops unreachable IK targets silently: five commanded-but-still steps end the episode."""
    bridge = _BridgeStandIn(init_delay_s=0.0, drop_step=-1, moves=False)
    env = WidowXRobotEnv(RobotLinkConfig(server=f"127.0.0.1:{bridge.port}", legacy_pickle=True, image_size=16))
    try:
        env.reset()
        for _ in range(4):
            env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        with pytest.raises(EpisodeAborted, match="stood still for 5 steps"):
            env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        env.reset()
        for _ in range(8):  # asked to stay put: standing still is right
            env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    finally:
        env.close()
        bridge.close()


class _WallClockSim(SimBackend):
    """The sim arm with a wall clock, as a real arm has: exercises the server's velocity limit."""

    def clock(self) -> float:
        return time.monotonic()


def test_velocity_limit_shrinks_steps_sent_faster_than_the_control_rate():
    server = RobotServer(_WallClockSim("reach"), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = RobotLinkConfig(server=f"127.0.0.1:{server.port}", image=False)
    env = WidowXRobotEnv(cfg)
    try:
        env.reset()
        targets = []
        for pause in (0.0, 0.0, 0.0, 0.3):  # three steps back to back, then one after a full period
            time.sleep(pause)
            before = server.backend.env.sim.controller.target_pos.copy()
            _raw(cfg, wire.encode({"type": "act", "key": "step_action",
                                   "payload": {"action": np.array([0.05, 0, 0, 0, 0, 0, 1.0])}}))
            targets.append(server.backend.env.sim.controller.target_pos[0] - before[0])
        # The first step after a reset may take a whole step; back-to-back ones only speed x (a few ms).
        assert targets[0] == pytest.approx(0.05, abs=1e-6)
        assert all(0 <= t < 0.02 for t in targets[1:3]), targets
        assert targets[3] == pytest.approx(0.05, abs=1e-6)  # 0.3 s later: 0.25 m/s x 0.3 s > the 5 cm step cap
    finally:
        env.close()
        server.stop()
        thread.join(5)


def test_a_persons_label_overrides_the_reward_and_ends_the_episode(local_server):
    server, cfg = local_server
    calls = []

    def classifier(obs):  # stands in for the success classifier: always "no success"
        calls.append(obs["image"].shape)
        return 0.0, False

    env = WidowXRobotEnv(cfg, reward_fn=classifier)
    try:
        env.reset()
        _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert (reward, terminated, truncated, info["success"]) == (0.0, False, False, False)
        env.labels.set("success")
        _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert (reward, terminated, truncated, info["success"], info["label"]) == (1.0, True, False, True, "success")
        env.reset()
        env.labels.set("failure")
        _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert (reward, terminated, truncated, info["success"]) == (0.0, False, True, False)
        env.labels.set("success")  # pressed after the episode ended: dropped at the next reset
        env.reset()
        _, reward, terminated, *_ = env.step(np.zeros(7, np.float32))
        assert (reward, terminated) == (0.0, False)
        assert len(calls) == 4 and calls[0] == (32, 32, 3)
        with pytest.raises(ValueError, match="label"):
            env.labels.set("maybe")
    finally:
        env.close()


def test_a_restarted_server_is_initialised_again_and_the_arm_sent_home_first():
    """The server process comes back empty (not initialised): the client aborts the episode it was in, and its
    next reset sends init again; go_home() moves the arm to its start pose before the first episode."""
    port = free_port()
    resets = []

    class CountingSim(SimBackend):
        def reset(self) -> None:
            resets.append(time.monotonic())
            super().reset()

    def start():
        server = RobotServer(CountingSim("reach"), port=port)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return server, thread

    server, thread = start()
    env = WidowXRobotEnv(RobotLinkConfig(server=f"127.0.0.1:{port}", image=False, init_timeout_s=3))
    try:
        home = env.go_home()["state"]
        assert len(resets) == 1
        obs, _ = env.reset()  # the episode starts where go_home left the arm: no second trip home
        assert len(resets) == 1
        np.testing.assert_allclose(obs["state"], home, atol=1e-3)
        for _ in range(4):
            obs, *_ = env.step(np.array([1, 0, 0, 0, 0, 0, 1], np.float32))
        assert obs["state"][0] - home[0] > 0.1
        server.stop()
        thread.join(5)
        server.backend.close()
        with pytest.raises(EpisodeAborted):  # mid-episode: no reply; never re-sent
            env.step(np.zeros(7, np.float32))
        with pytest.raises(EpisodeAborted, match="handshake|no observation|no reply"):
            env.reset()  # still down
        server, thread = start()  # back, empty
        obs, _ = env.reset()
        assert server.initialised and server.state == "idle"
        # Home again, not where the aborted episode left the arm (>0.1 m away): the physics settles the wrist to
        # within a few mrad of the first trip's pose, not to the same digits (CI saw 2.3 mrad on the pitch).
        np.testing.assert_allclose(obs["state"], home, atol=1e-2)
        env.step(np.zeros(7, np.float32))
        assert server.state == "active"
    finally:
        env.close()
        server.stop()
        thread.join(5)


def test_the_robot_env_takes_its_reward_from_a_success_classifier(local_server, tmp_path):
    """``robots[i].reward_classifier``: the actor's env scores each camera frame; success ends the episode."""
    import torch

    from fleetrl.config import EnvConfig, robot_from_dict
    from fleetrl.envs.robot_client import make_robot_env
    from fleetrl.envs.success_reward import ClassifierReward
    from fleetrl.learners.reward_classifier import SuccessClassifier, save_classifier

    server, cfg = local_server
    torch.manual_seed(0)
    path = save_classifier(tmp_path / "clf.pt", SuccessClassifier(32), {"threshold": 0.5})
    scorer = ClassifierReward(path)
    robot = {"name": "w", "server": cfg.server, "image_size": 32, "reward_classifier": str(path)}
    env_cfg = EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=6)
    for threshold, expect_success in ((0.001, True), (0.999, False)):
        env = make_robot_env(robot_from_dict({**robot, "reward_threshold": threshold}), env_cfg)
        try:
            env.reset()
            rewards, ends = [], []
            for _ in range(6):
                obs, reward, terminated, truncated, info = env.step(np.full(7, 0.3, np.float32))
                p = scorer.probability(obs)
                assert (reward == 1.0) == (p >= threshold) == info["success"]
                rewards.append(reward)
                ends.append((terminated, truncated))
                if terminated or truncated:
                    break
            if expect_success:  # the first frame is a success: reward 1, terminal, after one step
                assert rewards == [1.0] and ends == [(True, False)]
            else:  # never: six zero rewards, then the time limit (a truncation)
                assert rewards == [0.0] * 6 and ends[-1] == (False, True)
        finally:
            env.close()
    with pytest.raises(ValueError, match=r"robots\[w\].reward_classifier: .* 32 px frames, the robot sends "
                                         r"image_size 64"):
        make_robot_env(robot_from_dict({**robot, "image_size": 64}), env_cfg)


def test_move_and_gripper_commands_reach_the_arm(local_server):
    server, cfg = local_server
    env = WidowXRobotEnv(cfg)
    try:
        start, _ = env.reset()
        target = np.array([0.32, 0.08, 0.10, 0.0, 0.0, 0.3])
        obs = env.move_to(target, duration_s=1.0)
        np.testing.assert_allclose(obs["state"][:3], target[:3], atol=0.01)
        assert abs(obs["state"][5] - 0.3) < 0.05
        out_of_box = env.move_to(np.array([0.8, 0.0, 0.5, 0, 0, 0]), duration_s=0.4)  # clipped to the workspace
        assert out_of_box["state"][0] <= Safety().workspace_high[0] + 0.01
        assert out_of_box["state"][2] <= Safety().workspace_high[2] + 0.01
        closed = None
        for _ in range(5):  # the fingers take a few control periods to close
            closed = env.set_gripper(False)
        assert closed["state"][6] < start["state"][6] - 0.3
        assert env.set_gripper(True)["state"][6] > closed["state"][6]
    finally:
        env.close()
