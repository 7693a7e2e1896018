"""A chunked flow policy in the env loop (issue 8): chunks are executed in order, re-planned at every episode start
and after a person acted, and the episode's success reaches the sink."""

from __future__ import annotations

import numpy as np

from fleetrl.actors.env_loop import EnvLoop
from fleetrl.config import EnvConfig
from fleetrl.envs.gym_adapter import make_env, transition_spec
from fleetrl.testing import ListSink
from fleetrl.types import TransitionSpec


class CountingChunkPolicy:
    """A stateful policy: each chunk is ``[k, k, k]`` for chunk number k (action entry 0), plans counted."""

    def __init__(self, action_dim: int, horizon: int = 3):
        self.action_dim, self.horizon = action_dim, horizon
        self.plans, self.queue = 0, []

    def reset(self):
        self.queue = []

    def act(self, obs, deterministic=False):
        if not self.queue:
            self.plans += 1
            self.queue = [np.full(self.action_dim, 0.01 * self.plans, np.float32)] * self.horizon
        return self.queue.pop(0)

    def load_weights(self, weights):
        pass


class PersonAtStep:
    """Takes over for exactly one step (step ``at`` of every episode)."""

    def __init__(self, at: int, action_dim: int):
        self.at, self.t, self.action = at, 0, np.zeros(action_dim, np.float32)

    def begin_episode(self):
        self.t = 0

    def poll(self, obs):
        t, self.t = self.t, self.t + 1
        return (self.action, True) if t == self.at else (None, False)

    def applied(self):
        pass

    def rerecord(self):
        return False


def test_chunks_run_in_order_and_are_replanned_at_episode_start_and_after_a_person():
    cfg = EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=8, success="info")
    env = make_env(cfg)
    spec = transition_spec(cfg)
    policy = CountingChunkPolicy(int(spec.action.shape[0]))
    sink = ListSink()
    loop = EnvLoop(env, spec, lambda: (1, policy), sink, actor_id=0, gamma=0.99, seed=0,
                   human=PersonAtStep(at=4, action_dim=int(spec.action.shape[0])))
    stats = []
    try:
        for _ in range(2):
            stats.append(loop.run_episode())
    finally:
        env.close()
    checked = 0
    for rows, _ in sink.episodes:
        if len(rows) < 8:
            continue  # an episode that reached the target early
        checked += 1
        first = [float(r["action"][0]) for r in rows]
        person = [bool(r["is_intervention"]) for r in rows]
        assert person == [t == 4 for t in range(8)]
        # steps 0-2: one chunk; step 3: the next chunk's first action; step 4: the person; steps 5-7: a new chunk
        # planned after the person let go (the rest of the interrupted chunk is dropped).
        k = round(first[0] / 0.01)
        assert [round(a / 0.01) for a in first[:4]] == [k, k, k, k + 1]
        assert first[4] == 0.0
        assert [round(a / 0.01) for a in first[5:]] == [k + 2] * 3
    assert checked >= 1
    assert sink.successes == [s.success for s in stats]  # the episode's outcome reaches the replay writer


def test_a_robot_style_loop_starts_every_episode_with_a_fresh_chunk_of_the_episode_policy():
    """Robots swap weights between episodes (``swap_between_episodes``); a chunk left over at an episode's end is
    dropped, so the next episode starts from a chunk planned on its own first observation."""
    cfg = EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=4, success="info")
    env = make_env(cfg)
    spec = transition_spec(cfg)
    policy = CountingChunkPolicy(int(spec.action.shape[0]), horizon=3)
    sink = ListSink()
    loop = EnvLoop(env, spec, lambda: (7, policy), sink, actor_id=0, gamma=0.99, seed=1,
                   swap_between_episodes=True)
    try:
        lengths = [loop.run_episode().length for _ in range(2)]
    finally:
        env.close()
    assert lengths == [4, 4]  # seeded: neither episode reaches the target early with these tiny actions
    plans = [[round(float(r["action"][0]) / 0.01) for r in rows] for rows, _ in sink.episodes]
    # 4 steps per episode, 3 per chunk: chunk 1 then the first action of chunk 2; the rest of chunk 2 is dropped,
    # so episode 2 starts with chunk 3.
    assert plans == [[1, 1, 1, 2], [3, 3, 3, 4]]
    assert all(int(r["policy_version"]) == 7 for rows, _ in sink.episodes for r in rows)


def test_a_robot_actor_runs_a_flow_chunk_policy_over_the_wire():
    """A real ``FlowChunkPolicy`` on a robot actor's env (``WidowXRobotEnv`` over the wire to a ``RobotServer``
    with the sim backend), with robots' between-episode weight swaps: the arm executes each chunk's actions in
    order, every episode starts from a chunk planned on its own first observation, and the rows carry them."""
    import threading

    import torch

    from fleetrl.config import FlowConfig, RobotConfig
    from fleetrl.envs.robot_client import make_robot_env
    from fleetrl.learners.flow_policy import FlowChunkPolicy
    from fleetrl.robot.backends import SimBackend
    from fleetrl.robot.server import RobotServer

    server = RobotServer(SimBackend("reach"), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = make_robot_env(RobotConfig(name="w", server=f"127.0.0.1:{server.port}", image=False),
                         EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=5))
    try:
        spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
        policy = FlowChunkPolicy(spec, FlowConfig(horizon=3, denoise_steps=3, hidden_dims=(16,), time_features=4),
                                 seed=0)
        planned = []
        sample = policy.actor.sample_chunks
        policy.actor.sample_chunks = lambda obs, noise: planned.append(sample(obs, noise)) or planned[-1]
        sink = ListSink()
        loop = EnvLoop(env, spec, lambda: (3, policy), sink, actor_id=0, gamma=0.99, seed=2,
                       swap_between_episodes=True)
        lengths = [loop.run_episode().length for _ in range(2)]
    finally:
        env.close()
        server.stop()
        thread.join(5)
    assert lengths == [5, 5]
    # 5 steps, chunks of 3: two chunks per episode (the second cut short), four plans in all.
    assert len(planned) == 4
    chunks = [torch.as_tensor(c[0]).reshape(3, -1).clamp(-1, 1).numpy() for c in planned]
    for e, (rows, _) in enumerate(sink.episodes):
        executed = np.stack([r["action"] for r in rows])
        expected = np.concatenate([chunks[2 * e], chunks[2 * e + 1][:2]])
        np.testing.assert_allclose(executed, expected, atol=1e-6)
        assert all(int(r["policy_version"]) == 3 for r in rows)
