"""Real-robot control loop through the sim backend over loopback: step latency, and the rate EnvLoop holds at 5 Hz.

``fleetrl robot-server --backend sim`` (the MuJoCo WidowX reach scene behind the ZeroMQ socket) runs as a real
subprocess on 127.0.0.1; the robot client env :class:`WidowXRobotEnv` talks to it as a robot actor does. One
``step`` is two round trips: ``act step_action`` (the server reads the TCP position with ``tcp_state()``, which
renders nothing, clips the delta to its step, velocity and workspace limits, steps the arm) and ``obs``. A camera
client's ``obs`` gets state, joints and the 128 px frame (``observe()``); a state-only client asks for
``keys: [state, joints]`` and the server calls ``observe(image=False)``: no frame is rendered or sent. Bridge robots
step at 5 Hz, so a step has a 200 ms budget.

Part 1, step latency (unpaced, back to back), six variants interleaved one 60-step episode at a time (a Bridge
episode; each starts with a reset, timed apart from the steps), random actions in [-1, 1]^7, after a warm-up:

- ``client, state only``: ``WidowXRobotEnv(image=False)`` over the socket;
- ``client, camera``: ``WidowXRobotEnv(image=True, image_size=128)`` over the socket;
- ``client, camera, no socket`` (diagnostic split): the same camera client env with its socket replaced by a direct
  call of an in-process ``RobotServer``'s request handler (msgpack encode and decode both ways, the server's checks,
  the backend), so what is left between it and ``client, camera`` is ZeroMQ, loopback TCP and the process hop;
- ``backend in-process, state only`` and ``backend in-process, camera`` (the baselines): :class:`SimBackend` called
  directly, exactly the calls the server makes for one client step: ``clock()`` and ``tcp_state()`` with the
  server's clipping, ``step(delta)``, then ``observe(image=False)`` (state only) or ``observe()`` (camera); each
  part is also timed on its own. Each client variant is compared with its own baseline (state only with state only,
  the camera variants with camera).

Two diagnostics run in the same rotation (60 each per round): ``socket round trip (hash)``, a ``hash`` request on
its own connection (tiny request and reply, no backend work: the socket floor of one round trip), and ``wire codec
(obs reply)``, msgpack encode + decode of one camera obs reply with its 128 px frame (~49 KB) in this process.

A random action can drive the arm where it stands still however it is commanded (the client then aborts the
episode, as on a robot whose IK drops the target); the client variants then reset, as EnvLoop does, and go on until
they have their 60 steps. Aborts are counted. The server's velocity limits run on the sim's physics clock (one
control step = 0.2 s of physics), so at one request per step they do not bind, here or in the baselines. Both
clients share the server's backend (both ask for 128 px, so the second ``init`` keeps the scene); both baselines
share one in-process backend.

Part 2, control rate: :class:`EnvLoop` with ``max_steps_per_s=5.0`` on the robot actor's env (``make_robot_env``:
camera 128 px, 60-step episodes), a policy provider that has no policy yet (``(-1, None)``: random actions), and a
sink that accepts every episode, for a fixed wall time. Each ``env.step``'s start is timestamped; the figures are
the achieved rate, the step period's p50 / p99, and the share of periods longer than 200 ms + 10 ms.

Headline: p99 client step latency / the 200 ms budget, state only and camera, and each client's p50 / its in-process
baseline's p50. The machine's other load (its cores busy with processes other than this script and its server) is
recorded per part.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pathlib  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _common import _cpu_snapshot, parse_args, percentile, print_table, save  # noqa: E402

from fleetrl.actors.env_loop import EnvLoop  # noqa: E402
from fleetrl.config import EnvConfig, RobotConfig  # noqa: E402
from fleetrl.core import EpisodeAborted  # noqa: E402
from fleetrl.envs.robot_client import RobotLinkConfig, WidowXRobotEnv, make_robot_env  # noqa: E402
from fleetrl.robot import wire  # noqa: E402
from fleetrl.robot.backends import POS_SCALE, ROT_SCALE, SimBackend  # noqa: E402
from fleetrl.robot.server import CONTROL_PERIOD_S, RobotServer, Safety  # noqa: E402
from fleetrl.testing import free_port  # noqa: E402
from fleetrl.types import TransitionSpec  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "reach"
IMAGE_SIZE = 128
EPISODE_STEPS = 60  # a Bridge episode
CONTROL_HZ = 5.0  # RobotConfig.max_steps_per_s default (Bridge robots)
BUDGET_S = 1.0 / CONTROL_HZ
LATE_MARGIN_S = 0.010
WATCHDOG_S = 1.0  # the server's default

STATE, CAMERA, NO_SOCKET = "client, state only", "client, camera", "client, camera, no socket"
BACKEND_STATE, BACKEND_CAMERA = "backend in-process, state only", "backend in-process, camera"
BASELINE = {STATE: BACKEND_STATE, CAMERA: BACKEND_CAMERA, NO_SOCKET: BACKEND_CAMERA}  # each client's own baseline
PING, CODEC = "socket round trip (hash)", "wire codec (obs reply)"


# ---- the server subprocess ----------------------------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its own, not its children's)."""
    rest = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class ServedSim:
    """``fleetrl robot-server --backend sim`` in its own process on a free loopback port; stopped with SIGINT."""

    def __init__(self, watchdog_s: float):
        self.port = free_port()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.argv = [sys.executable, "-m", "fleetrl.cli", "robot-server", "--backend", "sim", "--task", TASK,
                     "--port", str(self.port), "--watchdog-s", str(watchdog_s)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, MUJOCO_GL=os.environ["MUJOCO_GL"]))
        deadline = time.monotonic() + 90
        while True:  # until it answers the handshake (each miss costs the client's 800 ms timeout)
            env = WidowXRobotEnv(self.link(image=False))
            try:
                env.handshake()
                break
            except ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"robot server did not come up: {self.log_text()[-2000:]}") from None
            finally:
                env.close()
        self.startup_s = time.perf_counter() - t0

    def link(self, image: bool) -> RobotLinkConfig:
        return RobotLinkConfig(server=f"127.0.0.1:{self.port}", image=image, image_size=IMAGE_SIZE)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9


class CpuMeter:
    """Cores used by this process, by the server, and by everything else, between construction and :meth:`end`."""

    def __init__(self, server: ServedSim):
        self.server = server
        self.start, self.server0 = _cpu_snapshot(), server.cpu_s()

    def end(self) -> dict[str, float] | None:
        end, server1 = _cpu_snapshot(), self.server.cpu_s()
        if end is None or self.start is None:
            return None
        wall = end[0] - self.start[0]
        busy, own, srv = end[1] - self.start[1], end[2] - self.start[2], server1 - self.server0
        return {"wall_s": round(wall, 2), "this_process_cores": round(own / wall, 2),
                "server_cores": round(srv / wall, 2), "others_cores": round((busy - own - srv) / wall, 2)}


# ---- part 1: step latency -----------------------------------------------------------------------------------------
def to_delta(a: np.ndarray) -> np.ndarray:
    """The client's conversion of a policy action into the Bridge command (m, rad, gripper opening in [0, 1])."""
    a = np.clip(np.asarray(a, np.float64).reshape(7), -1.0, 1.0)
    return np.concatenate([a[:3] * POS_SCALE, a[3:6] * ROT_SCALE, [(a[6] + 1.0) / 2.0]])


class InProcessClient:
    """Stands in for :class:`RobotClient`: the request goes to a ``RobotServer``'s handler in this process, through
    the same msgpack encode / decode both ways, with no socket."""

    def __init__(self, server: RobotServer):
        self.server = server

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        return wire.decode(wire.encode(self.server._handle(wire.encode(message))))

    def close(self) -> None:
        pass


class ClientRunner:
    """Episodes of a :class:`WidowXRobotEnv`; times each ``step``, each ``reset`` and each request of a step."""

    def __init__(self, env: WidowXRobotEnv):
        self.env = env
        self.steps: list[float] = []
        self.resets: list[float] = []
        self.requests: dict[str, list[float]] = {}
        self.aborts: list[str] = []
        self._in_step = False
        inner = env.client.request

        def timed(message: dict[str, Any]) -> Any:
            t = time.perf_counter()
            try:
                return inner(message)
            finally:
                if self._in_step:
                    kind = message["type"] + (f" {message['key']}" if message["type"] == "act" else "")
                    self.requests.setdefault(kind, []).append(time.perf_counter() - t)

        env.client.request = timed  # type: ignore[method-assign]

    def _reset(self) -> None:
        t = time.perf_counter()
        self.env.reset()
        self.resets.append(time.perf_counter() - t)

    def episode(self, n: int, seed: int) -> bool:
        """``n`` timed steps after a reset, actions drawn from ``seed``; an aborted episode is followed by a reset,
        as EnvLoop does, and the steps continue until there are ``n``. Returns whether none was aborted."""
        rng = np.random.default_rng(seed)
        self._reset()
        done, aborts = 0, len(self.aborts)
        while done < n:
            a = rng.uniform(-1.0, 1.0, 7).astype(np.float32)
            self._in_step = True
            t = time.perf_counter()
            try:
                self.env.step(a)
            except EpisodeAborted as exc:  # random actions can drive the arm where it stands still (IK): aborted
                self._in_step = False
                self.aborts.append(str(exc))
                self._reset()
                continue
            finally:
                self._in_step = False
            self.steps.append(time.perf_counter() - t)
            done += 1
        return len(self.aborts) == aborts

    def clear(self) -> None:
        self.steps, self.resets, self.requests, self.aborts = [], [], {}, []


class BackendRunner:
    """A baseline: the backend calls the server makes for one client step, in this process, no socket, no wire:
    ``clock()`` and ``tcp_state()`` with the server's clipping (``_act_step_action``), ``step(delta)``, then the obs
    request's ``observe(image=...)``."""

    def __init__(self, backend: SimBackend, image: bool):
        self.backend, self.image, self.safety = backend, image, Safety()
        self.clear()

    def clear(self) -> None:
        self.steps: list[float] = []
        self.resets: list[float] = []
        obs_part = "observe (obs reply, frame)" if self.image else "observe(image=False) (obs reply)"
        self.parts: dict[str, list[float]] = {"tcp_state + clip": [], "step (physics + IK)": [], obs_part: []}
        self.aborts: list[str] = []

    def episode(self, n: int, seed: int) -> bool:
        b, s, rng = self.backend, self.safety, np.random.default_rng(seed)
        t = time.perf_counter()
        b.reset()  # the client's act reset, then its obs poll
        b.observe(image=self.image)
        self.resets.append(time.perf_counter() - t)
        last_step_at: float | None = None
        for _ in range(n):
            action = to_delta(rng.uniform(-1.0, 1.0, 7).astype(np.float32))
            t0 = time.perf_counter()
            now = b.clock()  # as RobotServer._act_step_action: velocity limits on the backend's clock
            dt = CONTROL_PERIOD_S if last_step_at is None else max(now - last_step_at, 0.0)
            last_step_at = now
            lin, ang = min(s.max_step_m, s.max_speed_m_s * dt), min(s.max_step_rad, s.max_speed_rad_s * dt)
            delta = np.concatenate([np.clip(action[:3], -lin, lin), np.clip(action[3:6], -ang, ang),
                                    [np.clip(action[6], 0.0, 1.0)]])
            pos = b.tcp_state()[:3]
            delta[:3] = np.clip(pos + delta[:3], s.workspace_low, s.workspace_high) - pos
            t1 = time.perf_counter()
            b.step(delta)
            t2 = time.perf_counter()
            b.observe(image=self.image)
            t3 = time.perf_counter()
            self.steps.append(t3 - t0)
            for key, dt_part in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                self.parts[key].append(dt_part)
        return True


class PingRunner:
    """Diagnostic: the socket floor, a ``hash`` request (tiny request and reply, no backend work) on its own
    connection to the server, ``n`` times back to back."""

    def __init__(self, link: RobotLinkConfig):
        from fleetrl.envs.robot_client import RobotClient

        self.client = RobotClient(link)
        self.clear()

    def clear(self) -> None:
        self.steps: list[float] = []
        self.resets: list[float] = []
        self.aborts: list[str] = []

    def episode(self, n: int, seed: int = 0) -> bool:
        for _ in range(n):
            t = time.perf_counter()
            if self.client.request({"type": "hash"}) is None:
                raise RuntimeError("robot server: no reply to hash")
            self.steps.append(time.perf_counter() - t)
        return True


class CodecRunner:
    """Diagnostic: msgpack encode + decode of one camera obs reply (state, joints, the 128 px frame) here."""

    def __init__(self, reply: dict[str, Any]):
        self.reply = reply
        self.clear()

    def clear(self) -> None:
        self.steps: list[float] = []
        self.resets: list[float] = []
        self.aborts: list[str] = []

    def episode(self, n: int, seed: int = 0) -> bool:
        for _ in range(n):
            t = time.perf_counter()
            wire.decode(wire.encode(self.reply))
            self.steps.append(time.perf_counter() - t)
        return True


def ms_stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"p50": 1e3 * percentile(values, 50), "p99": 1e3 * percentile(values, 99), "max": 1e3 * max(values),
            "mean": 1e3 * statistics.fmean(values), "n": len(values)}


# ---- part 2: the paced control loop -------------------------------------------------------------------------------
class StepClock:
    """Passes everything to ``env``; records each ``step``'s start and duration and each ``reset``'s."""

    def __init__(self, env: Any):
        self.env = env
        self.steps: list[tuple[float, float, int]] = []  # (start, seconds, episode index)
        self.resets: list[float] = []
        self.episode = -1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kwargs: Any) -> Any:
        self.episode += 1
        t = time.perf_counter()
        try:
            return self.env.reset(**kwargs)
        finally:
            self.resets.append(time.perf_counter() - t)

    def step(self, action: np.ndarray) -> Any:
        t = time.perf_counter()
        try:
            return self.env.step(action)
        finally:
            self.steps.append((t, time.perf_counter() - t, self.episode))


class AcceptSink:
    """Takes every finished episode and drops it (no replay in this benchmark)."""

    def __init__(self) -> None:
        self.episodes = 0

    def write_episode(self, rows: list[dict[str, Any]], padding_row: dict[str, Any],
                      should_stop: Callable[[], bool] | None = None, success: bool = False) -> bool:
        self.episodes += 1
        return True


def control_loop(server: ServedSim, seconds: float) -> dict[str, Any]:
    robot = RobotConfig(name="widowx_bench", server=f"127.0.0.1:{server.port}", image=True, image_size=IMAGE_SIZE,
                        max_steps_per_s=CONTROL_HZ)
    env = StepClock(make_robot_env(robot, EnvConfig(max_episode_steps=EPISODE_STEPS)))
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    sink = AcceptSink()
    loop = EnvLoop(env, spec, lambda: (-1, None), sink, actor_id=0, gamma=0.99, seed=0,
                   max_steps_per_s=robot.max_steps_per_s, swap_between_episodes=robot.swap_weights == "episode")
    aborted: list[str] = []
    t_end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < t_end:
            stats = loop.run_episode(should_stop=lambda: time.perf_counter() >= t_end)
            if stats is not None and stats.aborted:
                aborted.append(stats.aborted)
    finally:
        env.close()
    starts = [s for s, _, _ in env.steps]
    periods = [b[0] - a[0] for a, b in zip(env.steps, env.steps[1:], strict=False)]
    within = [b[0] - a[0] for a, b in zip(env.steps, env.steps[1:], strict=False) if a[2] == b[2]]
    across = [p for p, (a, b) in zip(periods, zip(env.steps, env.steps[1:], strict=False), strict=True)
              if a[2] != b[2]]
    late = BUDGET_S + LATE_MARGIN_S
    durations = [d for _, d, _ in env.steps]
    return {
        "seconds": seconds, "steps": len(env.steps), "episodes_started": env.episode + 1,
        "episodes_written": sink.episodes, "episodes_aborted": len(aborted), "abort_reasons": aborted[:5],
        "achieved_hz": (len(starts) - 1) / (starts[-1] - starts[0]),
        "achieved_hz_within_episodes": 1.0 / statistics.fmean(within),
        "period_ms": ms_stats(periods), "period_ms_within_episodes": ms_stats(within),
        "period_ms_across_resets": ms_stats(across),
        "late_share": sum(p > late for p in periods) / len(periods),
        "late_share_within_episodes": sum(p > late for p in within) / len(within),
        "late_periods_ms": [round(1e3 * p, 1) for p in periods if p > late],
        "step_ms": ms_stats(durations), "reset_ms": ms_stats(env.resets[1:]),  # the first one connects and inits
        "slack_ms_p50": 1e3 * (BUDGET_S - percentile(durations, 50)),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    episodes = args.repeats or (2 if args.quick else 9)  # 60-step episodes per variant: 120 / 540 steps
    loop_s = 10.0 if args.quick else 30.0
    warmup_steps = 10 if args.quick else 30

    server = ServedSim(WATCHDOG_S)
    try:
        meter = CpuMeter(server)
        state_env, camera_env = WidowXRobotEnv(server.link(image=False)), WidowXRobotEnv(server.link(image=True))
        backend = SimBackend(TASK)
        backend.init(IMAGE_SIZE)
        local = RobotServer(backend, port=0)  # binds a random port it never serves: its handler is called directly
        nosocket_env = WidowXRobotEnv(server.link(image=True))
        nosocket_env.client.close()
        nosocket_env.client = InProcessClient(local)  # type: ignore[assignment]
        obs_reply = {"ok": True, **backend.observe(), "robot_state": "active"}
        state_reply = {"ok": True, **backend.observe(image=False), "robot_state": "active"}
        runners: dict[str, Any] = {STATE: ClientRunner(state_env), BACKEND_STATE: BackendRunner(backend, image=False),
                                   CAMERA: ClientRunner(camera_env), BACKEND_CAMERA: BackendRunner(backend, image=True),
                                   NO_SOCKET: ClientRunner(nosocket_env),
                                   PING: PingRunner(server.link(image=False)), CODEC: CodecRunner(obs_reply)}
        # Warm-up: the clients' first reset does the handshake and init (the server builds its scene and renderer).
        first_reset_ms = {}
        for name, runner in runners.items():
            runner.episode(warmup_steps, seed=0)
            first_reset_ms[name] = 1e3 * runner.resets[0] if runner.resets else None
            runner.clear()
        # Interleaved one episode at a time; in each round every variant gets the same action sequence (the same
        # arm trajectory, so the same IK work), and per-step differences can be paired.
        rounds: dict[str, list[tuple[list[float], bool]]] = {name: [] for name in runners}
        for k in range(episodes):
            for name, runner in runners.items():
                before = len(runner.steps)
                clean = runner.episode(EPISODE_STEPS, seed=1000 + k)
                rounds[name].append((runner.steps[before:], clean))
        latency_cpu = meter.end()
        obs_bytes, state_bytes = len(wire.encode(obs_reply)), len(wire.encode(state_reply))
        step_bytes = len(wire.encode({"type": "act", "key": "step_action",
                                      "payload": {"action": to_delta(np.zeros(7)), "blocking": True}}))
        for env in (state_env, camera_env, nosocket_env):
            env.close()
        runners[PING].client.close()
        local.stop()
        backend.close()

        meter = CpuMeter(server)
        loop = control_loop(server, loop_s)
        loop["cpu"] = meter.end()
        server_cpu_s = server.cpu_s()
    finally:
        rc = server.stop()
    server_log = server.log_text()

    latency: dict[str, Any] = {}
    for name, r in runners.items():
        latency[name] = {"step_ms": ms_stats(r.steps), "reset_ms": ms_stats(r.resets),
                         "first_reset_ms": first_reset_ms[name], "aborted_episodes": len(r.aborts),
                         "abort_reasons": r.aborts[:5]}
        if isinstance(r, ClientRunner):
            latency[name]["request_ms"] = {k: ms_stats(v) for k, v in r.requests.items()}
        elif isinstance(r, BackendRunner):
            latency[name]["part_ms"] = {k: ms_stats(v) for k, v in r.parts.items()}
    ratios: dict[str, Any] = {}
    for name in (STATE, CAMERA, NO_SOCKET):
        s, base = latency[name]["step_ms"], latency[BASELINE[name]]["step_ms"]
        ratios[name] = {"baseline": BASELINE[name],
                        "p50 / backend p50": s["p50"] / base["p50"], "p99 / backend p99": s["p99"] / base["p99"],
                        "overhead_ms_p50 (step - backend step)": s["p50"] - base["p50"],
                        "overhead_ms_mean": s["mean"] - base["mean"],
                        "p50 / 200 ms budget": s["p50"] / (1e3 * BUDGET_S),
                        "p99 / 200 ms budget": s["p99"] / (1e3 * BUDGET_S),
                        "max / 200 ms budget": s["max"] / (1e3 * BUDGET_S)}
    for name in (STATE, CAMERA, NO_SOCKET):  # step by step against its baseline on the same actions
        diffs = [x - y for (xs, cx), (ys, cy) in zip(rounds[name], rounds[BASELINE[name]], strict=True) if cx and cy
                 for x, y in zip(xs, ys, strict=True)]
        ratios[name]["paired_overhead_ms_p50 (median of step_i - backend step_i, same actions)"] = (
            1e3 * percentile(diffs, 50) if diffs else None)
        ratios[name]["paired_steps"] = len(diffs)
    cam, nos, base = latency[CAMERA]["step_ms"], latency[NO_SOCKET]["step_ms"], latency[BACKEND_CAMERA]["step_ms"]
    ratios["state_only_vs_camera"] = {
        "client p50 / camera client p50": latency[STATE]["step_ms"]["p50"] / cam["p50"],
        "backend p50 / camera backend p50": latency[BACKEND_STATE]["step_ms"]["p50"] / base["p50"]}
    ratios["split_ms_p50 (camera)"] = {"backend (tcp_state + step + observe)": base["p50"],
                              "wire + server checks + client env code (no socket - backend)": nos["p50"] - base["p50"],
                              "ZeroMQ + loopback + process hop (camera - no socket)": cam["p50"] - nos["p50"],
                              "diagnostic: 2 x socket round trip (hash)": 2 * latency[PING]["step_ms"]["p50"],
                              "diagnostic: wire codec of the obs reply": latency[CODEC]["step_ms"]["p50"]}
    ratios["control_loop"] = {"achieved_hz / 5 Hz": loop["achieved_hz"] / CONTROL_HZ,
                              "period_p99 / 200 ms": loop["period_ms"]["p99"] / (1e3 * BUDGET_S),
                              "step_p99 / 200 ms": loop["step_ms"]["p99"] / (1e3 * BUDGET_S)}
    results = {
        "latency": latency, "control_loop": loop, "latency_cpu": latency_cpu,
        "server": {"startup_s": server.startup_s, "sigint_returncode": rc, "cpu_s_total": server_cpu_s,
                   "watchdog_holds_logged": server_log.count("watchdog: no command"),
                   "log_tail": server_log[-1500:]},
        "message_bytes": {"obs reply (state, joints, 128 px image)": obs_bytes,
                          "obs reply, state only (state, joints)": state_bytes, "act step_action request": step_bytes},
    }

    rows = []
    for name in runners:
        s, rs = latency[name]["step_ms"], latency[name]["reset_ms"]
        rows.append([name, s["p50"], s["p99"], s["max"], s["n"], rs.get("p50", "-"),
                     s["p50"] / latency[BASELINE[name]]["step_ms"]["p50"] if name in BASELINE else "-",
                     s["p99"] / (1e3 * BUDGET_S) if name not in (PING, CODEC) else "-"])
    print_table(f"Step latency, ms ({episodes} x {EPISODE_STEPS}-step episodes per variant, interleaved; "
                f"budget {1e3 * BUDGET_S:.0f} ms)",
                ["variant", "p50", "p99", "max", "n", "reset p50", "p50 x own baseline", "p99 / budget"], rows)
    for name in (BACKEND_STATE, BACKEND_CAMERA):
        parts = latency[name]["part_ms"]
        print(f"{name} parts, p50 ms: " + ", ".join(f"{k} {v['p50']:.2f}" for k, v in parts.items()))
    print("requests, p50 ms: " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v['p50']:.2f}" for k, v in latency[n]["request_ms"].items())
        for n in (STATE, CAMERA, NO_SOCKET)))
    print_table(f"EnvLoop at max_steps_per_s={CONTROL_HZ:g}, camera {IMAGE_SIZE} px, {loop_s:g} s",
                ["achieved Hz", "period p50 ms", "period p99 ms", "period max ms", "late (>210 ms)", "step p50 ms",
                 "step p99 ms", "steps", "aborted eps"],
                [[loop["achieved_hz"], loop["period_ms"]["p50"], loop["period_ms"]["p99"], loop["period_ms"]["max"],
                  f"{loop['late_share']:.1%}", loop["step_ms"]["p50"], loop["step_ms"]["p99"], loop["steps"],
                  loop["episodes_aborted"]]])
    print(f"cores during part 1: {latency_cpu}; during part 2: {loop['cpu']}")
    save("bench_robot_loop", args,
         params={"task": TASK, "image_size": IMAGE_SIZE, "episode_steps": EPISODE_STEPS,
                 "episodes_per_variant": episodes, "warmup_steps": warmup_steps, "control_hz": CONTROL_HZ,
                 "budget_ms": 1e3 * BUDGET_S, "late_margin_ms": 1e3 * LATE_MARGIN_S, "loop_seconds": loop_s,
                 "server_watchdog_s": WATCHDOG_S, "server_argv": server.argv[1:], "bind": "127.0.0.1",
                 "client_timeout_ms": RobotLinkConfig().timeout_ms, "actions": "uniform random in [-1, 1]^7",
                 "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
                 "loop_policy": "provider returns (-1, None): EnvLoop samples env.action_space",
                 "loop_swap_between_episodes": True},
         results=results, ratios=ratios,
         notes=["percentiles are linear-interpolated over all timed steps of a variant (pooled over its episodes)",
                "the server reads the TCP position with tcp_state() (no rendering) in step_action; a state-only "
                "client's obs request carries keys [state, joints], so the server calls observe(image=False) and "
                "sends no frame; a camera client's obs renders one 128 px frame per step",
                "each client variant is compared with its own in-process baseline (state only: tcp_state + step + "
                "observe(image=False); camera and no-socket: tcp_state + step + observe()); both baselines apply "
                "the server's step, velocity and workspace clipping",
                "the server's velocity limits run on the sim's physics clock (0.2 s per control step) and do not "
                "bind at one request per step",
                "others_cores excludes this script and the robot-server subprocess; loadavg covers everything",
                "period_ms includes the periods that span an episode reset; period_ms_within_episodes excludes "
                "them"])


if __name__ == "__main__":
    main()
