"""Robots in a running experiment, end to end over real sockets and processes.

One real run (embedded Ray, Reverb, learner, one paced sim actor) with a robot actor driving ``fleetrl robot-server
--backend sim`` (a separate process). The test

- labels a robot episode a success with ``fleetrl label`` (a person's word, stored as reward 1, terminal);
- kills the robot server (SIGKILL) in the middle of an episode: the actor aborts that episode (nothing of it is
  stored) without dying, waits, and goes on once the server is back (a new process, not initialised); the learner
  trains throughout;
- attaches a second robot with ``fleetrl attach`` while the run goes on, lets it collect, and detaches it with
  ``fleetrl detach``: everything it reported written is in replay, whole, and its arm is left at home;
- checks every robot episode in replay is whole.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import ray
import reverb

from fleetrl.config import load_config
from fleetrl.distributed.replay import ONLINE_TABLE
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.runs import new_run
from fleetrl.testing import TrainingThread, free_port, scan_table, wait_for, zmq_request

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EPISODE = 30
REPO = pathlib.Path(__file__).parents[1]
ENV = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))


def _server(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetrl.cli", "robot-server", "--backend", "sim", "--port",
                             str(port), "--watchdog-s", "1.0"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)


def _ask(port: int, message: dict) -> dict | None:
    return zmq_request(f"tcp://127.0.0.1:{port}", message)


def _cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "fleetrl.cli", *args], cwd=REPO, capture_output=True, text=True,
                         env=ENV, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def servers():
    procs: dict[int, subprocess.Popen] = {}

    def start(port: int) -> None:
        procs[port] = _server(port)

    yield start, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)


def test_robots_survive_a_server_crash_and_join_and_leave_a_running_experiment(tmp_path, servers):
    start_server, procs = servers
    port_a, port_b = free_port(), free_port()
    start_server(port_a)
    start_server(port_b)
    cfg = load_config(None, [
        f"run_root={tmp_path}", "name=robots", "total_env_steps=10000000",
        "env.id=fleetrl/WidowXReach-v0", "env.success=info", f"env.max_episode_steps={EPISODE}",
        "env.kwargs={privileged: false, terminate_on_success: false}",
        "actors.num_sim=1", "actors.random_steps=0", "actors.max_steps_per_s=50",
        f"robots=[{{name: widowx_0, server: '127.0.0.1:{port_a}', image: false, max_steps_per_s: 25}}]",
        "replay.min_size=128", "replay.updates_per_step=1.0", "replay.rate_tolerance_steps=1000000",
        "learner.batch_size=64", "learner.publish_every=5", "learner.sac.hidden_dims=[32, 32]",
        "logging.interval_s=0.5", "logging.live=false", "logging.wandb=false", "recovery.probe_after_s=1.0"])
    spec = transition_spec(cfg.env)
    plan = new_run(cfg)
    run = str(plan.run_dir)
    with TrainingThread(plan) as training:
        fleet = training.fleet
        robot = fleet.actors[1]
        stats = lambda: ray.get(robot.handle.stats.remote(drain=False), timeout=60)  # noqa: E731
        learner_steps = lambda: ray.get(fleet.learner.handle.stats.remote(), timeout=60)["learner_steps"]  # noqa: E731
        wait_for(lambda: stats()["episodes_written"] >= 1 and learner_steps() > 0, 180, "robot episodes, training")

        # 1. A person says "success" mid-episode: that step is stored with reward 1 and ends the episode.
        assert _cli("label", "--robot", "widowx_0", "success", "--run", run) == {"robot": "widowx_0",
                                                                                  "outcome": "success"}
        labelled = wait_for(lambda: [e for e in robot.recent if e["success"]], 30, "the labelled episode")[0]
        assert labelled["length"] < EPISODE and labelled["ret"] == 1.0

        # 2. The robot server dies mid-episode, and comes back later as a new, uninitialised process.
        wait_for(lambda: 8 <= stats()["episode_steps"] <= 20, 60, "the robot mid-episode", interval_s=0.02)
        procs[port_a].kill()
        procs[port_a].wait(10)
        aborted = wait_for(lambda: [e for e in robot.recent if e["aborted"]], 30, "the aborted episode")[0]
        assert aborted["written"] is False and aborted["length"] > 0
        written_before, steps_before = stats()["episodes_written"], learner_steps()
        start_server(port_a)
        wait_for(lambda: stats()["episodes_written"] >= written_before + 2, 180, "robot episodes after the restart")
        assert robot.restarts == 0 and stats()["incarnation"] == 0  # the actor lived through it
        assert learner_steps() > steps_before

        # 3. A second robot joins the running experiment, collects, and leaves cleanly.
        joined = _cli("attach", "--robot", "widowx_1", "--server", f"127.0.0.1:{port_b}", "--run", run,
                      "image=false", "max_steps_per_s=25")
        assert joined["actor_id"] == 2 and joined["env_steps"] > 0
        assert fleet.actors[2].robot.name == "widowx_1" and fleet.actors[0].restarts == 0
        second = fleet.actors[2]
        wait_for(lambda: (second.stats or {}).get("episodes_written", 0) >= 2, 120, "widowx_1 episodes")
        left = _cli("detach", "--robot", "widowx_1", "--run", run)
        assert left["robot"] == "widowx_1" and left["pending_episodes"] == 0 and left["episodes_written"] >= 2
        assert 2 not in fleet.actors
        assert _ask(port_b, {"type": "obs"})["robot_state"] == "idle"  # sent home, not held by the watchdog
        wait_for(lambda: [a["name"] for a in json.loads((plan.run_dir / "status.json").read_text())["actors"]]
                 == ["actor 0", "robot widowx_0"], 10, "status without widowx_1")
        with pytest.raises(AssertionError, match="not part of this run"):
            _cli("detach", "--robot", "widowx_1", "--run", run)

        # 4. What reached replay: every robot episode whole; the aborted one absent; widowx_1's all there.
        address = ray.get(fleet.replay.endpoint.remote())["address"]
        size = reverb.Client(address).server_info()[ONLINE_TABLE].current_size
        seen = scan_table(address, spec, samples=size * 30)
        assert aborted["episode_id"] not in seen
        # widowx_0 still runs: its newest two episodes may be in the writer's hands while the scan samples.
        in_flight = set(sorted(ep for ep, items in seen.items() if next(iter(items.values()))["actor_id"] == 1)[-2:])
        for ep, items in seen.items():
            actor = next(iter(items.values()))["actor_id"]
            if actor == 0 or ep in in_flight:
                continue
            ends = [i for i in items.values() if i["terminated"] or i["truncated"]]
            if ep == labelled["episode_id"]:
                assert len(items) == labelled["length"] and [(i["reward"], i["terminated"]) for i in ends] == [
                    (1.0, True)]
            else:
                assert len(items) == EPISODE and len(ends) == 1 and ends[0]["truncated"], (actor, ep, len(items))
                assert all(i["reward"] == 0.0 for i in items.values())  # no classifier: a robot has no reward
        assert sum(next(iter(i.values()))["actor_id"] == 2 for i in seen.values()) == left["episodes_written"]
    assert training.error is None, training.error
    assert training.summary["restarts"] == {}
    events = [json.loads(line) for line in (plan.run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["action"] for e in events if e["component"] == "robot widowx_1"] == ["attached", "detaching",
                                                                                   "detached"]
