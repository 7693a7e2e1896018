"""A real (or served) WidowX as a gymnasium env: the client side of the Bridge robot-server protocol.

It talks to ``fleetrl robot-server`` (msgpack, token) or, by explicit opt-in (``legacy_pickle=True``), to an
existing Bridge ``widowx_envs`` server (lz4 + pickle; only for a server you trust). Observations and actions follow
the simulated WidowX: ``state`` (7), ``joints`` (6, fleetrl servers only), ``image`` uint8 (S, S, 3); actions in
[-1, 1] scaled to ±0.05 m / ±0.25 rad per step, gripper -1 closed ... +1 open.

The protocol's realities are handled by aborting, never by guessing: a missing reply (800 ms timeout; the socket is
recreated), an execution failure (effort limit), a watchdog hold, or an arm that stands still however it is
commanded (the server ignores IK failures silently) raise :class:`EpisodeAborted` from ``step``. The env loop drops
that episode (nothing of it is stored) and resets. A step is never re-sent: whether the arm executed it is unknown.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
import zmq

from fleetrl.core import EpisodeAborted
from fleetrl.robot import wire
from fleetrl.robot.backends import POS_SCALE, ROT_SCALE
from fleetrl.robot.server import BRIDGE_HASH


@dataclasses.dataclass(frozen=True)
class RobotLinkConfig:
    """How to reach one robot server."""

    server: str = "127.0.0.1:5556"
    token: str | None = None
    legacy_pickle: bool = False
    """Talk lz4 + pickle to a legacy Bridge server. Unpickling its replies runs code it chooses: trusted servers
    only."""
    timeout_ms: int = 800
    init_timeout_s: float = 60.0
    image: bool = True
    """Camera observations (``image``); off: state (and joints) only, like the sim WidowX without cameras."""
    image_size: int = 128
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    frozen_command_m: float = 0.02
    frozen_motion_m: float = 0.002
    """A step commanded to move at least ``frozen_command_m`` that moved the TCP less than ``frozen_motion_m``
    counts as frozen (the symptom of a target the server's IK dropped)."""
    stuck_steps: int = 5
    """Consecutive frozen steps before the episode is aborted."""
    workspace_low: tuple[float, float, float] = (0.1, -0.15, -0.1)
    workspace_high: tuple[float, float, float] = (0.45, 0.25, 0.18)
    """The server's workspace box (Bridge's bounds): commands beyond it are not expected to move the arm."""


class ServerUnreachable(EpisodeAborted, ConnectionError):
    """No reply from the robot server (down or restarting): the episode is aborted, the actor tries again later."""


class NotInitialised(EpisodeAborted):
    """The server has not been initialised (it was restarted): ``init`` must be sent again."""


class LabelSlot:
    """A person's success / failure label for the episode in progress (the teleop keys, ``fleetrl label``).

    Set from any thread; the env takes it at its next step. A label given between episodes is dropped at reset,
    so it never ends the next episode."""

    OUTCOMES = ("success", "failure")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcome: str | None = None

    def set(self, outcome: str) -> None:
        if outcome not in self.OUTCOMES:
            raise ValueError(f"label: expected one of {self.OUTCOMES}, got {outcome!r}")
        with self._lock:
            self._outcome = outcome

    def take(self) -> str | None:
        with self._lock:
            outcome, self._outcome = self._outcome, None
        return outcome


class RobotClient:
    """REQ socket to one robot server; ``request`` returns None when no reply came in time."""

    def __init__(self, cfg: RobotLinkConfig):
        self.cfg = cfg
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, self.cfg.timeout_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, self.cfg.timeout_ms)
        self._sock.connect(f"tcp://{self.cfg.server}")

    def request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.cfg.token is not None and not self.cfg.legacy_pickle:
            message = {**message, "token": self.cfg.token}
        data = wire.encode_bridge(message) if self.cfg.legacy_pickle else wire.encode(message)
        assert self._sock is not None
        try:
            self._sock.send(data)
            reply = self._sock.recv()
        except zmq.Again:
            self._connect()  # a REQ socket that missed its reply cannot send again: start a new one
            return None
        return wire.decode_bridge(reply) if self.cfg.legacy_pickle else wire.decode(reply)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class WidowXRobotEnv(gym.Env):
    """One WidowX reached over the network.

    Reward: 0 unless a ``reward_fn(obs) -> (reward, success)`` is given (e.g. a success classifier); a person's
    label (:attr:`labels`) overrides it: ``success`` gives reward 1 and ends the episode as terminal, ``failure``
    gives reward 0 and ends it as truncated (the operator stopped it; the state is not terminal)."""

    metadata = {"render_modes": [], "render_fps": 5}

    def __init__(self, cfg: RobotLinkConfig | None = None, reward_fn: Any = None, terminate_on_success: bool = True,
                 **kwargs: Any):
        self.cfg = cfg or RobotLinkConfig(**kwargs)
        self._reward_fn = reward_fn
        self._terminate_on_success = terminate_on_success
        self.labels = LabelSlot()
        self._at_home = False
        self.client = RobotClient(self.cfg)
        s = self.cfg.image_size
        spaces: dict[str, gym.spaces.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)}
        if not self.cfg.legacy_pickle:
            spaces["joints"] = gym.spaces.Box(-2 * np.pi, 2 * np.pi, (6,), np.float32)
        if self.cfg.image:
            spaces["image"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        # A fleetrl server renders and sends no frame to a client without a camera; a Bridge server gets its own
        # request form.
        keys = list(spaces)
        self._obs_request = {"type": "obs"} if self.cfg.legacy_pickle or self.cfg.image else {"type": "obs",
                                                                                                "keys": keys}
        self._initialised = False
        self._stuck = 0
        self._last_state: np.ndarray | None = None

    # ---- protocol --------------------------------------------------------------------------------------------
    def handshake(self) -> None:
        reply = self.client.request({"type": "hash"})
        if reply is None:  # down or restarting: the episode is aborted and the actor tries again later
            raise ServerUnreachable(f"robot server {self.cfg.server}: no reply to the handshake")
        if reply.get("payload") != BRIDGE_HASH:
            raise ConnectionError(f"robot server {self.cfg.server}: handshake mismatch: {reply.get('payload')!r}")

    def _act(self, key: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        reply = self.client.request({"type": "act", "key": key, "payload": payload})
        if reply is not None and reply.get("status") == 3:  # a restarted server: init again before anything else
            self._initialised = False
            raise NotInitialised(f"{key}: the robot server is not initialised (restarted?)")
        if reply is not None and (reply.get("ok") is False or reply.get("status", 1) != 1):
            raise EpisodeAborted(f"{key}: {reply.get('error') or 'status ' + str(reply.get('status'))}")
        return reply

    def _poll_obs(self, timeout_s: float) -> dict[str, np.ndarray]:
        """Ask for observations until one arrives: slow ``init`` / ``reset`` block the lock-step server."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.client.request(self._obs_request)
            if reply is not None and reply.get("ok", True) is not False and "state" in reply:
                return self._convert(reply)
            if reply is not None and "not initialised" in str(reply.get("error")):  # restarted while we waited
                self._initialised = False
                raise NotInitialised(f"robot server {self.cfg.server}: not initialised (restarted?)")
        raise EpisodeAborted(f"robot server {self.cfg.server}: no observation within {timeout_s:.0f} s")

    def _convert(self, reply: dict[str, Any]) -> dict[str, np.ndarray]:
        s = self.cfg.image_size
        obs = {"state": np.asarray(reply["state"], np.float32).reshape(7)}
        if self.cfg.image:
            image = np.asarray(reply["image"])
            if image.dtype != np.uint8:  # Bridge: float32 (n_cams, 3*S*S) in [0, 1], channel-first, flattened
                image = np.clip(np.round(image.reshape(-1, 3, s, s)[0].transpose(1, 2, 0) * 255), 0, 255)
            obs["image"] = image.astype(np.uint8)
        if "joints" in self.observation_space.spaces:
            obs["joints"] = np.asarray(reply["joints"], np.float32).reshape(6)
        return obs

    # ---- gymnasium -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.labels.take()  # a label pressed after the last episode ended belongs to no episode
        if self._at_home:  # go_home() just did it
            self._at_home = False
            obs = self._poll_obs(self.cfg.init_timeout_s)
        else:
            obs = self._reset_arm()
        self._stuck, self._last_state = 0, obs["state"]
        return obs, {"success": False}

    def _reset_arm(self) -> dict[str, np.ndarray]:
        if not self._initialised:
            self._init()
        try:
            self._act("reset", {})  # longer than the client timeout on a real arm: a missing reply is normal
            return self._poll_obs(self.cfg.init_timeout_s)
        except NotInitialised:  # the server was restarted since our init
            self._init()
            self._act("reset", {})
            return self._poll_obs(self.cfg.init_timeout_s)

    def _init(self) -> None:
        self.handshake()
        # The first init builds the robot env (~10 s on a Bridge server): the reply may miss; poll instead.
        self._act("init", {"env_params": self.cfg.env_params, "image_size": self.cfg.image_size})
        self._initialised = True

    def go_home(self) -> dict[str, np.ndarray]:
        """Bring the arm to its start pose (gripper open) before anything else, e.g. when a restarted actor takes
        over an arm its predecessor left mid-motion. The next :meth:`reset` does not move it again."""
        obs = self._reset_arm()
        self._at_home = True
        return obs

    def move_to(self, pose: np.ndarray, duration_s: float = 1.0) -> dict[str, np.ndarray]:
        """Move the TCP to an absolute pose ``(x, y, z, roll, pitch, yaw)`` (m, rad; Bridge convention) and return
        the observation once there. A long move outlasts the 800 ms reply timeout: the observation is polled, as
        after ``reset``. The server clips the pose to its workspace and slows the move to its velocity limits."""
        pose = np.asarray(pose, np.float64).reshape(6)
        self._act("move", {"pose": pose, "duration": float(duration_s), "blocking": True})
        obs = self._poll_obs(duration_s + self.cfg.init_timeout_s)
        self._stuck, self._last_state = 0, obs["state"]
        return obs

    def set_gripper(self, open_: bool) -> dict[str, np.ndarray]:
        """Open (True) or close the gripper; returns the observation after it."""
        if self._act("gripper", {"open": 1.0 if open_ else 0.0}) is None:
            raise EpisodeAborted("gripper: no reply within the timeout (not re-sent)")
        obs = self._poll_obs(self.cfg.init_timeout_s)
        self._last_state = obs["state"]
        return obs

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, np.float64).reshape(7), -1.0, 1.0)
        delta = np.concatenate([a[:3] * POS_SCALE, a[3:6] * ROT_SCALE, [(a[6] + 1.0) / 2.0]])
        if self._act("step_action", {"action": delta, "blocking": True}) is None:
            raise EpisodeAborted("step_action: no reply within the timeout (not re-sent: it may have run)")
        reply = self.client.request(self._obs_request)
        if reply is None or reply.get("ok") is False:
            raise EpisodeAborted("obs after step: " + ("no reply" if reply is None else str(reply.get("error"))))
        if reply.get("robot_state") == "holding":
            raise EpisodeAborted("the server's watchdog is holding the arm")
        obs = self._convert(reply)
        self._check_follows(obs["state"], delta)
        reward, success = self._reward_fn(obs) if self._reward_fn is not None else (0.0, False)
        label = self.labels.take()
        if label is not None:  # a person's word beats the classifier's
            reward, success = (1.0, True) if label == "success" else (0.0, False)
        terminated = bool(success) and (self._terminate_on_success or label == "success")
        truncated = label == "failure"
        return obs, float(reward), terminated, truncated, {"success": bool(success), "label": label}

    def _check_follows(self, state: np.ndarray, delta: np.ndarray) -> None:
        """A Bridge server drops targets its IK cannot reach without a word: the arm then stands still however
        it is commanded. Several such steps in a row abort the episode instead of storing them."""
        assert self._last_state is not None
        # What the command can move inside the workspace box (the server clips at its edges: no motion is due).
        last = self._last_state[:3]
        commanded = float(np.linalg.norm(np.clip(last + delta[:3], self.cfg.workspace_low, self.cfg.workspace_high)
                                         - last))
        moved = float(np.linalg.norm(state[:3] - self._last_state[:3]))
        if commanded >= self.cfg.frozen_command_m and moved < self.cfg.frozen_motion_m:
            self._stuck += 1
            if self._stuck >= self.cfg.stuck_steps:
                raise EpisodeAborted(f"the arm stood still for {self._stuck} steps while commanded to move (an IK "
                                     "failure the server ignored?)")
        else:
            self._stuck = 0
        self._last_state = state

    def close(self) -> None:
        self.client.close()


def robot_transition_spec(robot: Any) -> Any:
    """The transition spec ``robot``'s actor will have (checked before one is started; nothing is contacted)."""
    from fleetrl.types import TransitionSpec

    env = WidowXRobotEnv(RobotLinkConfig(server=robot.server, legacy_pickle=robot.legacy_pickle, image=robot.image,
                                         image_size=robot.image_size))
    try:
        return TransitionSpec.from_spaces(env.observation_space, env.action_space)
    finally:
        env.close()


def make_robot_env(robot: Any, env_cfg: Any) -> gym.Env:
    """The env of a robot actor: ``robots[i]`` of the config, with the run env's time limit and success rule."""
    from fleetrl.envs.gym_adapter import FleetEnv

    reward_fn = None
    if robot.reward_classifier is not None:
        from fleetrl.envs.success_reward import ClassifierReward

        reward_fn = ClassifierReward(robot.reward_classifier, threshold=robot.reward_threshold)
        if reward_fn.image_size != robot.image_size:
            raise ValueError(f"robots[{robot.name}].reward_classifier: {robot.reward_classifier} was trained on "
                             f"{reward_fn.image_size} px frames, the robot sends image_size {robot.image_size}")
    env = WidowXRobotEnv(RobotLinkConfig(server=robot.server, token=robot.token, legacy_pickle=robot.legacy_pickle,
                                         image=robot.image, image_size=robot.image_size),
                         reward_fn=reward_fn, terminate_on_success=robot.terminate_on_success)
    steps = env_cfg.max_episode_steps or 60  # Bridge tasks: 60-step episodes
    return FleetEnv(gym.wrappers.TimeLimit(env, max_episode_steps=steps), success="info")
