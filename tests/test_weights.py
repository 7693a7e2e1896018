"""Weight broadcast through real Ray actors and a real Reverb server, with a policy whose action is its weight."""

from __future__ import annotations

import numpy as np
import ray
import reverb

from fleetrl.config import load_config
from fleetrl.distributed.replay import BatchSource
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.testing import constant_policy_factory, wait_for


def test_published_version_changes_actions_mid_episode(ray_local, tmp_path):
    # Pendulum never terminates: 1000-step episodes paced at 200 steps/s (5 s each) leave a wide window for the
    # publish to land mid-episode on both actors, however unevenly they start.
    # A rate limiter that never blocks these inserts: this test is about weights, not the update-to-data ratio.
    cfg = load_config(None, ["env.id=Pendulum-v1", "env.success=info", "env.max_episode_steps=1000",
                             "actors.random_steps=0", "actors.num_sim=2", "replay.min_size=256",
                             "actors.max_steps_per_s=200", "replay.updates_per_step=0.001",
                             "replay.rate_tolerance_steps=1000000"])
    spec = transition_spec(cfg.env)
    replay = ReplayServer.remote(spec, cfg, str(tmp_path / "replay"))
    address = ray.get(replay.address.remote())
    store = WeightStore.remote()
    ray.get(store.publish.remote(0, {"action": np.array([0.25], np.float32)}))
    factory = constant_policy_factory(spec.action.shape)
    actors = [SimActor.remote(i, cfg, spec, replay, store, factory, generation=2) for i in range(2)]
    runs = [a.run.remote(max_episodes=2, wait_for_version=0) for a in actors]
    try:
        # Let each actor get well into its first episode, then publish a new version.
        wait_for(lambda: all(ray.get(a.stats.remote(drain=False))["env_steps"] > 100 for a in actors), 60,
              "first steps")
        ray.get(store.publish.remote(7, {"action": np.array([-0.5], np.float32)}))
        wait_for(lambda: all(ray.get(a.policy_version.remote()) == 7 for a in actors), 10, "version 7 on all actors")
        finals = ray.get(runs, timeout=120)
    finally:
        for a in actors:
            ray.kill(a)
    # Actor-side record: the first episode used both versions (the switch happened mid-episode).
    for i, f in enumerate(finals):
        assert f["episodes"][0]["versions"] == (0, 7)
        # Episode ids carry the run generation and the actor id.
        assert all(e["episode_id"] >> 44 == 2 and (e["episode_id"] >> 28) & 0xFFFF == i for e in f["episodes"])
    # Replay-side record: every stored action equals the weight of the version it is labelled with.
    client = reverb.Client(address)
    n = client.server_info()["online"].current_size
    assert n == 2 * 2 * 1000
    assert n == sum(f["steps_written"] for f in finals)
    source = BatchSource(address, spec, batch_size=600)
    batch = source.next(timeout_s=30)
    source.close()
    versions, actions = batch.policy_version.numpy(), batch.action[:, 0].numpy()
    assert set(versions) == {0, 7}
    np.testing.assert_allclose(actions[versions == 0], 0.25)
    np.testing.assert_allclose(actions[versions == 7], -0.5)
    ray.kill(replay)


def test_store_ignores_stale_versions_and_times_out(ray_local):
    store = WeightStore.remote()
    ray.get(store.publish.remote(3, {"action": np.ones(1)}))
    ray.get(store.publish.remote(2, {"action": np.zeros(1)}))  # late publish of an older version
    assert ray.get(store.version.remote()) == 3
    seq, _, version, (ref,), _ = ray.get(store.wait_newer.remote(0, 1.0))
    assert (seq, version) == (1, 3) and ray.get(ref)["action"][0] == 1.0
    assert ray.get(store.wait_newer.remote(seq, 0.2)) is None


def test_restarted_learner_replaces_weights_with_a_lower_version(ray_local):
    """A learner restarted from an older checkpoint publishes a lower step count under a higher epoch: the store
    takes it, subscribers are woken, and the crashed learner's late publishes of its old epoch are ignored."""
    store = WeightStore.remote()
    ray.get(store.publish.remote(500, {"action": np.ones(1)}, epoch=0))
    seq, *_ = ray.get(store.wait_newer.remote(0, 1.0))
    ray.get(store.publish.remote(300, {"action": np.full(1, 2.0)}, epoch=1))  # restarted from step 300
    ray.get(store.publish.remote(510, {"action": np.zeros(1)}, epoch=0))  # in flight from the dead learner
    new_seq, epoch, version, (ref,), _ = ray.get(store.wait_newer.remote(seq, 1.0))
    assert (new_seq, epoch, version) == (seq + 1, 1, 300) and ray.get(ref)["action"][0] == 2.0
    assert ray.get(store.wait_newer.remote(new_seq, 0.2)) is None
