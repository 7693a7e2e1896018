"""A robot actor (the WidowX behind `fleetrl robot-server --backend sim`) beside a sim actor in one run; the robot
actor's process is killed: the server's watchdog leaves the arm holding its pose, nothing re-sends the dead
actor's commands, and the restarted actor brings the arm home (reset) before it acts again."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray
import zmq

from fleetrl.config import load_config
from fleetrl.distributed.launcher import train
from fleetrl.robot import wire
from fleetrl.runs import new_run
from fleetrl.testing import free_port, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = pathlib.Path(__file__).parents[1]


def _ask(port: int, message: dict) -> dict:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        sock.send(wire.encode(message))
        return wire.decode(sock.recv())
    finally:
        sock.close()


def test_killed_robot_actor_leaves_the_arm_holding_and_its_successor_resets_first(tmp_path):
    port = free_port()
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    server = subprocess.Popen([sys.executable, "-m", "fleetrl.cli", "robot-server", "--backend", "sim", "--port",
                               str(port), "--watchdog-s", "1.0"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    cfg = load_config(None, [
        f"run_root={tmp_path}", "name=robotfault", "total_env_steps=10000000",
        "env.id=fleetrl/WidowXReach-v0", "env.success=info", "env.max_episode_steps=20",
        "env.kwargs={privileged: false}",
        "actors.num_sim=1", "actors.random_steps=0", "actors.max_steps_per_s=50",
        f"robots=[{{name: widowx_0, server: '127.0.0.1:{port}', image: false, max_steps_per_s: 20}}]",
        "replay.min_size=64", "replay.updates_per_step=0.2", "replay.rate_tolerance_steps=100000",
        "learner.batch_size=32", "learner.sac.hidden_dims=[32, 32]", "checkpoint.every_updates=100000",
        "logging.interval_s=0.5", "logging.live=false", "logging.wandb=false"])
    plan = new_run(cfg)
    box: dict = {}
    started, stop = threading.Event(), threading.Event()

    def on_start(fleet):
        box["fleet"] = fleet
        started.set()

    def run():
        try:
            box["summary"] = train(plan, stop=stop, on_start=on_start)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(180) and "error" not in box, box.get("error")
        fleet = box["fleet"]
        robot = fleet.actors[1]
        assert robot.robot is not None and robot.name == "robot widowx_0"
        stats = lambda: ray.get(robot.handle.stats.remote(drain=False), timeout=120)  # noqa: E731
        wait_for(lambda: stats()["steps_written"] >= 40, 180, "the robot actor writing episodes")
        assert stats()["kind"] == "robot"

        os.kill(ray.get(robot.handle.pid.remote()), signal.SIGKILL)
        killed_at = time.monotonic()
        held = wait_for(lambda: (r := _ask(port, {"type": "obs"}))["robot_state"] == "holding" and r, 10,
                     "the watchdog to hold the arm", interval_s=0.05)
        assert time.monotonic() - killed_at < 3.0
        time.sleep(0.6)
        still = _ask(port, {"type": "obs"})
        # Held in place: the arm does not continue the dead actor's motion.
        np.testing.assert_allclose(still["state"][:3], held["state"][:3], atol=2e-3)
        refused = _ask(port, {"type": "act", "key": "step_action", "payload": {"action": np.zeros(7)}})
        assert refused["ok"] is False and "watchdog" in refused["error"]

        # The supervisor restarts the robot actor; it resets the arm (home) before acting, then writes again.
        wait_for(lambda: robot.restarts == 1 and robot.health == "ok" and (robot.stats or {}).get("incarnation") == 1
              and robot.stats["steps_written"] >= 20, 90, "the restarted robot actor writing")
        # It re-used the server (a repeated init keeps the scene) and reset the arm before acting.
        assert _ask(port, {"type": "obs"})["robot_state"] in ("active", "idle")
        # The sim actor was not disturbed.
        assert fleet.actors[0].restarts == 0
    finally:
        stop.set()
        thread.join(300)
        server.send_signal(signal.SIGINT)
        server.wait(20)
    assert "error" not in box, box.get("error")
    assert box["summary"]["restarts"] == {"robot widowx_0": 1}
