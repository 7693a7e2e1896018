"""The console's camera view of an actor without a camera (issue 7): a real SimActor on the state-only WidowX task
renders frames in its own loop, only while someone asks for them, and serves them through its teleop endpoint."""

from __future__ import annotations

import time

import numpy as np
import ray

from fleetrl.config import load_config
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.testing import constant_policy_factory, wait_for, zmq_request


def test_a_state_only_actor_renders_frames_for_a_watching_console(ray_local, tmp_path):
    cfg = load_config(None, [
        "env.id=fleetrl/WidowXReach-v0", "env.success=info", "env.max_episode_steps=null",
        "env.kwargs={render_size: 48}", "actors.random_steps=0", "actors.max_steps_per_s=50", "replay.min_size=10000",
        "teleop.bind=127.0.0.1"])
    spec = transition_spec(cfg.env)
    assert "image" not in spec.obs
    replay = ReplayServer.remote(spec, cfg, str(tmp_path / "replay"))
    store = WeightStore.remote()
    ray.get(store.publish.remote(0, {"action": np.zeros(7, np.float32)}))
    actor = SimActor.remote(0, cfg, spec, replay, store, constant_policy_factory(spec.action.shape),
                            teleop_token="t0ken")
    run = actor.run.remote(max_episodes=40, wait_for_version=0)
    try:
        stats = lambda: ray.get(actor.stats.remote(drain=False))  # noqa: E731
        wait_for(lambda: stats()["env_steps"] > 5, 60, "the actor stepping")
        address = stats()["teleop"]
        first = zmq_request(address, {"type": "frame", "token": "t0ken"})
        assert first.get("image") is None  # nothing was rendered before anyone asked
        reply = wait_for(lambda: (r := zmq_request(address, {"type": "frame", "token": "t0ken"})) is not None
                         and r.get("image") is not None and r, 30, "a rendered frame")
        image = np.asarray(reply["image"])
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and image.std() > 5  # a scene, not a blank
        # While watched, the view follows the scene: each new episode moves the target marker.
        seen, deadline = set(), time.monotonic() + 6.0
        while time.monotonic() < deadline and len(seen) < 2:
            seen.add(np.asarray(zmq_request(address, {"type": "frame", "token": "t0ken"})["image"]).tobytes())
            time.sleep(0.1)
        assert len(seen) >= 2
    finally:
        ray.get(actor.stop.remote())
        ray.get(run, timeout=60)
        ray.kill(actor)
        ray.kill(replay)
