"""A person taking over an actor (HIL-SERL): what is executed and stored, the demos table, the batch mix, and
control going back when the operator drops. Unit parts with a fake clock; then real sockets, Ray and Reverb."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray
import reverb
import zmq

from fleetrl.actors.env_loop import EnvLoop
from fleetrl.actors.intervention import Takeover
from fleetrl.actors.teleop_link import TeleopEndpoint
from fleetrl.config import EnvConfig, batch_rows, load_config
from fleetrl.datasets import Episode, EpisodeFileWriter
from fleetrl.distributed.replay import DEMOS_TABLE, ONLINE_TABLE, make_batch_source
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore
from fleetrl.envs.gym_adapter import make_env, transition_spec
from fleetrl.robot import wire
from fleetrl.testing import constant_policy_factory, scan_table, wait_for, zmq_request
from fleetrl.types import TransitionSpec


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_takeover_executes_the_persons_action_until_released_or_silent():
    clock = Clock()
    t = Takeover(7, timeout_s=0.5, clock=clock)
    assert t.poll() == (None, False)  # nobody in control: the policy acts
    t.update(1, True, np.full(7, 2.0), event_at=99.9)  # clipped to the action range
    action, by_person = t.poll()
    assert by_person and np.all(action == 1.0)
    clock.t += 0.05
    t.applied()
    assert t.applied_seq == 1 and t.stats.latency_s == [pytest.approx(0.15)]  # device event -> executed
    t.applied()  # the same command executed again at the next step is not a new device event
    assert len(t.stats.latency_s) == 1
    clock.t += 0.44
    assert t.poll()[1] is True  # 0.49 s after the last command: still the person's
    clock.t += 0.02
    assert t.poll() == (None, False) and t.stats.drops == 1 and not t.controlling  # silent > 0.5 s: policy again
    t.update(2, True, np.zeros(7), event_at=clock.t)
    assert t.poll()[1] is True  # back
    t.update(3, False, None, event_at=clock.t)
    assert t.poll() == (None, False)  # released
    with pytest.raises(ValueError, match="action: expected 7 finite numbers"):
        t.update(4, True, np.full(3, 0.1), event_at=clock.t)
    assert t.poll() == (None, False) and not t.controlling  # a refused command changes nothing
    fresh = Takeover(7, clock=clock)
    with pytest.raises(ValueError):
        fresh.update(1, True, None, event_at=clock.t)
    assert fresh.poll() == (None, False)


def test_a_dropped_operator_can_leave_the_actor_holding():
    clock = Clock()
    t = Takeover(7, timeout_s=0.5, on_disconnect="hold", clock=clock)
    t.update(1, True, np.array([0.5, 0, 0, 0, 0, 0, -1.0]), event_at=clock.t)
    clock.t += 0.6
    action, by_person = t.poll()
    assert not by_person and np.array_equal(action, [0, 0, 0, 0, 0, 0, -1.0])  # still, gripper kept closed
    clock.t += 10
    assert np.array_equal(t.poll()[0], action)  # holds until the operator is back or releases
    t.update(2, False, None, event_at=clock.t)
    assert t.poll() == (None, False)
    with pytest.raises(ValueError, match="on_disconnect"):
        Takeover(7, on_disconnect="freeze")


class ScriptedPerson:
    """Takes over on steps [start, stop) of every episode with action -0.75; asks for a re-record at ``redo``."""

    def __init__(self, start, stop, redo=None):
        self.start, self.stop, self.redo, self.step = start, stop, redo, 0
        self.applied_count = 0

    def begin_episode(self):
        pass

    def poll(self, obs):
        assert obs["state"].shape == (3,)
        k = self.step
        self.step += 1
        return (np.full(1, -0.75, np.float32), True) if self.start <= k < self.stop else (None, False)

    def applied(self):
        self.applied_count += 1

    def rerecord(self):
        return self.redo is not None and self.step == self.redo


class Rows:
    def __init__(self):
        self.episodes = []

    def write_episode(self, rows, padding_row, should_stop=lambda: False, success=False):
        self.episodes.append(rows)
        return True


def _pendulum_loop(human, sink):
    from fleetrl.testing import ConstantPolicy

    env = make_env(EnvConfig(id="Pendulum-v1", max_episode_steps=10))
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    policy = ConstantPolicy((1,))
    policy.action[:] = 0.25
    return EnvLoop(env, spec, lambda: (3, policy), sink, actor_id=0, gamma=0.9, seed=0, human=human)


def test_the_env_loop_stores_the_persons_action_marked_and_the_policys_otherwise():
    sink = Rows()
    person = ScriptedPerson(3, 6)
    loop = _pendulum_loop(person, sink)
    stats = loop.run_episode()
    rows = sink.episodes[0]
    assert [bool(r["is_intervention"]) for r in rows] == [k in (3, 4, 5) for k in range(10)]
    assert [float(r["action"][0]) for r in rows] == [-0.75 if k in (3, 4, 5) else 0.25 for k in range(10)]
    assert stats.interventions == 3 and person.applied_count == 3
    assert all(int(r["policy_version"]) == 3 for r in rows)


def test_a_rerecord_request_throws_the_episode_away():
    sink = Rows()
    loop = _pendulum_loop(ScriptedPerson(0, 2, redo=5), sink)
    stats = loop.run_episode()
    assert sink.episodes == [] and stats.aborted and "re-record" in stats.aborted and not stats.written


# ---- the teleop endpoint over a real socket -------------------------------------------------------------------
def _ask(address: str, message: dict) -> dict:
    return zmq_request(address, message)


def test_the_teleop_endpoint_takes_commands_checks_the_token_and_labels():
    takeover, labels = Takeover(7, timeout_s=5.0), []
    endpoint = TeleopEndpoint(takeover, "tok", actor_id=4, bind="127.0.0.1", label=labels.append)
    address = endpoint.address("127.0.0.1")
    try:
        reply = _ask(address, {"type": "control", "token": "tok", "seq": 1, "event_at": time.time(),
                               "takeover": True, "action": np.full(7, 0.5)})
        assert reply["ok"] and reply["controlling"] and reply["actor_id"] == 4
        assert takeover.poll()[1] is True
        assert _ask(address, {"type": "status", "token": "wrong"}) == {"ok": False, "error": "token: missing or wrong"}
        assert "action" in _ask(address, {"type": "control", "token": "tok", "seq": 2, "event_at": 0.0,
                                          "takeover": True, "action": "left"})["error"]
        assert "seq" in _ask(address, {"type": "control", "token": "tok", "takeover": True})["error"]
        assert "event" in _ask(address, {"type": "event", "token": "tok", "event": "maybe"})["error"]
        assert _ask(address, {"type": "event", "token": "tok", "event": "success"})["ok"] and labels == ["success"]
        _ask(address, {"type": "event", "token": "tok", "event": "rerecord"})
        assert takeover.rerecord() and not takeover.rerecord()
        assert _ask(address, {"type": "control", "token": "tok", "seq": 3, "event_at": 0.0, "takeover": False}
                    )["controlling"] is False
        assert endpoint.refused == 4
    finally:
        endpoint.close()
    with pytest.raises(ValueError, match="token"):
        TeleopEndpoint(takeover, "", actor_id=0)


# ---- a real actor, Reverb server and demos table (``ray_local``: tests/conftest.py) -----------------------------


def _seeds(path, n_episodes=2, length=20):
    rng = np.random.default_rng(0)
    with EpisodeFileWriter(path) as writer:
        for i in range(n_episodes):
            end = np.zeros(length, bool)
            end[-1] = True
            writer.add(Episode(observations={"state": rng.normal(size=(length + 1, 3)).astype(np.float32)},
                               actions=np.full((length, 1), -0.9, np.float32),
                               rewards=np.zeros(length, np.float32), terminated=np.zeros(length, bool),
                               truncated=end, success=np.zeros(length, bool), attrs={"seed": i}))
    return n_episodes * length


class Operator:
    """An operator's tool: sends the newest command at ``hz`` while ``sending`` is set."""

    def __init__(self, address: str, token: str, action: float, hz: float = 50.0):
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.RCVTIMEO, 3000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.token, self.action, self.period = token, action, 1.0 / hz
        self.seq = 0
        self.lock = threading.Lock()
        self.sending, self.done = threading.Event(), threading.Event()
        self.last_sent_at = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, takeover: bool, only_if_sending: bool = False) -> dict | None:
        with self.lock:  # one REQ socket, used by the sending thread and the test
            if only_if_sending and not self.sending.is_set():
                return None
            self.seq += 1
            self.sock.send(wire.encode({"type": "control", "token": self.token, "seq": self.seq,
                                        "event_at": time.time(), "takeover": takeover,
                                        "action": np.full(1, self.action)}))
            self.last_sent_at = time.monotonic()
            return wire.decode(self.sock.recv())

    def run(self):
        while not self.done.is_set():
            self.send(True, only_if_sending=True)
            time.sleep(self.period)


def test_interventions_reach_online_and_demos_and_the_learner_batch_mixes_them(ray_local, tmp_path):
    seeds = _seeds(tmp_path / "seeds.h5")
    cfg = load_config(None, [
        "env.id=Pendulum-v1", "env.success=info", "env.max_episode_steps=200", "actors.random_steps=0",
        "actors.max_steps_per_s=100", "replay.min_size=64", "replay.updates_per_step=0.001",
        "replay.rate_tolerance_steps=1000000", "learner.batch_size=64", "demos.ratio=0.5",
        f"demos.datasets=[{{path: '{tmp_path / 'seeds.h5'}'}}]", "teleop.timeout_s=0.3", "teleop.bind=127.0.0.1"])
    spec = transition_spec(cfg.env)
    replay = ReplayServer.remote(spec, cfg, str(tmp_path / "replay"))
    address = ray.get(replay.address.remote())
    assert ray.get(replay.demos_summary.remote())["transitions"] == seeds
    store = WeightStore.remote()
    ray.get(store.publish.remote(0, {"action": np.array([0.25], np.float32)}))
    actor = SimActor.remote(0, cfg, spec, replay, store, constant_policy_factory(spec.action.shape),
                            teleop_token="t0ken")
    run = actor.run.remote(max_episodes=5, wait_for_version=0)
    stats = lambda: ray.get(actor.stats.remote(drain=False))  # noqa: E731
    operator = None
    try:
        wait_for(lambda: stats()["env_steps"] > 20, 60, "the actor stepping")
        operator = Operator(stats()["teleop"], "t0ken", action=-0.75)
        operator.sending.set()  # take over for a while, then release
        wait_for(lambda: stats()["controlled"], 10, "the operator in control")
        time.sleep(0.5)
        with operator.lock:
            operator.sending.clear()
        assert operator.send(False)["controlling"] is False
        steps_released = stats()["env_steps"]
        operator.sending.set()  # take over again, then drop without a word
        wait_for(lambda: stats()["controlled"], 10, "the operator in control again")
        time.sleep(0.3)
        with operator.lock:
            operator.sending.clear()
        dropped_after = operator.last_sent_at
        wait_for(lambda: not stats()["controlled"], 10, "control back to the policy after the drop")
        assert stats()["teleop_drops"] == 1 and stats()["env_steps"] > steps_released
        # The operator's command-line tool, replaying a recorded session: 0.6 s at -0.5, then letting go.
        recording = tmp_path / "session.jsonl"
        recording.write_text("\n".join(json.dumps(line) for line in [
            {"t": 0.0, "action": [-0.5], "takeover": True},  # Pendulum's one action (devices give Bridge's 7)
            {"t": 0.6, "action": [0.0], "takeover": False}]))
        out = subprocess.run([sys.executable, "-m", "fleetrl.cli", "teleop", "--actor", "0", "--address",
                              stats()["teleop"], "--token", "t0ken", "--device", "recorded", "--recording",
                              str(recording), "--duration-s", "1.5"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        session = json.loads(out.stdout.strip().splitlines()[-1])
        assert session["commands"] >= 10 and session["latency_n"] >= 1 and session["latency_p50_ms"] > 0
        assert not stats()["controlled"]  # it let go at the end of the recording
        final = ray.get(run, timeout=120)
    finally:
        if operator is not None:
            operator.done.set()
        ray.kill(actor)
    assert dropped_after > 0 and final["teleop_latency_s"] and max(final["teleop_latency_s"]) < 10
    intervened = sum(e["interventions"] for e in final["episodes"])
    assert intervened > 0

    # Online: every transition, the person's action where marked, the policy's elsewhere.
    client = reverb.Client(address)
    online_size = client.server_info()[ONLINE_TABLE].current_size
    assert online_size == final["steps_written"] == 1000
    source = make_batch_source(address, spec, load_config(None, ["learner.batch_size=1000", "replay.min_size=1000"]),
                               "cpu")
    batch = source.next(timeout_s=30)
    source.close()
    marked, action = batch.is_intervention.numpy(), batch.action[:, 0].numpy()
    assert {round(float(a), 3) for a in action[marked]} == {-0.75, -0.5}  # the two operators' actions
    np.testing.assert_allclose(action[~marked], 0.25)
    # Demos: exactly the intervened steps plus the seeds.
    assert client.server_info()[DEMOS_TABLE].current_size == seeds + intervened
    demos = scan_table(address, spec, samples=(seeds + intervened) * 30, table=DEMOS_TABLE)
    demo_items = [i for items in demos.values() for i in items.values()]
    assert len(demo_items) == seeds + intervened and all(i["is_intervention"] for i in demo_items)
    assert sum(i["actor_id"] == 0 for i in demo_items) == intervened
    # The learner's batches: demos.ratio of the rows from demos (first), the rest from online.
    rows = batch_rows(cfg)
    assert rows == {"demos": 32, "online": 32}
    source = make_batch_source(address, spec, cfg, "cpu")
    try:
        for _ in range(5):
            b = source.next(timeout_s=30)
            assert b is not None and b.action.shape[0] == 64
            demo_part, online_part = b.action[:32, 0].numpy(), b.action[32:, 0].numpy()
            assert {round(float(x), 3) for x in demo_part} <= {-0.9, -0.75, -0.5}
            assert bool(b.is_intervention[:32].all())
            assert {round(float(x), 3) for x in online_part} <= {0.25, -0.75, -0.5}
    finally:
        source.close()
        ray.kill(replay)


def test_demos_config_is_checked():
    with pytest.raises(Exception, match="demos.datasets: seeds go to table demos"):
        load_config(None, ["demos.datasets=[{path: x.h5}]"])
    with pytest.raises(Exception, match="each table needs at least one row"):
        load_config(None, ["demos.ratio=0.6", "offline.datasets=[{path: x.h5}]"])


def test_the_scripted_operator_takes_over_a_share_of_episodes_with_the_expert():
    from fleetrl.actors.scripted_operator import ScriptedOperator
    from fleetrl.envs.widowx.experts import ScriptedExpert

    env = make_env(EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=30, success="info",
                             kwargs={"terminate_on_success": False}))
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    operator = ScriptedOperator(ScriptedExpert("reach"), share=0.5, steps=8, latest_start=5, seed=3)
    sink = Rows()
    loop = EnvLoop(env, spec, lambda: (-1, None), sink, actor_id=0, gamma=0.9, seed=0, human=operator)
    episodes = [loop.run_episode() for _ in range(10)]
    marked = [[bool(r["is_intervention"]) for r in rows] for rows in sink.episodes]
    taken = [m for m in marked if any(m)]
    assert len(taken) == operator.interventions and 0 < len(taken) < 10  # a share, not all or none
    for m in taken:  # one contiguous block of 8 steps starting in the first 6
        first = m.index(True)
        assert first <= 5 and m[first:first + 8] == [True] * 8 and not any(m[first + 8:])
    assert [e.interventions for e in episodes] == [sum(m) for m in marked]
    # The expert moves the TCP toward the target while it holds control; random actions before and after.
    rows = sink.episodes[marked.index(taken[0])]
    first = taken[0].index(True)
    state = lambda t: rows[t]["obs"]["state"][:3]  # noqa: E731
    target = rows[first]["obs"]["object"][:3]
    assert np.linalg.norm(state(first + 7) - target) < np.linalg.norm(state(first) - target) - 0.02
    with pytest.raises(ValueError, match="teleop.scripted_share"):
        ScriptedOperator(ScriptedExpert("reach"), share=1.5, steps=8)


# The console's camera view of an actor without a camera (here, not in a module of its own: a module with its own
# in-process Ray session just before test_fault_tolerance made that test's learner restart abort the pytest process
# inside Ray's reference counter, "Tried to create an owned object that already exists"; this module runs after it).
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
