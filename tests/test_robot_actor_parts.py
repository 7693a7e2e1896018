"""Parts of the robot actor and of run-time control, without Ray: episodes written off the control thread, the
command channel of ``fleetrl attach`` / ``detach`` / ``label``, and the attach-time robot config check."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fleetrl.actors.background_sink import BackgroundSink
from fleetrl.actors.env_loop import EnvLoop
from fleetrl.config import ConfigError, EnvConfig, robot_from_dict
from fleetrl.distributed.control import ControlError, Inbox, submit, wait_answer
from fleetrl.envs.gym_adapter import make_env
from fleetrl.testing import ListSink
from fleetrl.types import TransitionSpec


class BlockingSink(ListSink):
    """A replay writer stuck behind the rate limiter until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.abandoned = 0

    def write_episode(self, rows, padding_row, should_stop=lambda: False, success=False):
        while not self.release.wait(0.01):
            if should_stop():
                self.abandoned += 1
                return False
        return super().write_episode(rows, padding_row)


def _loop(sink, length=5):
    env = make_env(EnvConfig(id="Pendulum-v1", max_episode_steps=length))
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    return EnvLoop(env, spec, lambda: (-1, None), sink, actor_id=3, gamma=0.9, seed=0)


def test_the_control_loop_runs_on_while_the_replay_write_is_blocked():
    slow = BlockingSink()
    sink = BackgroundSink(slow, max_pending=10)
    loop = _loop(sink)
    episodes = [loop.run_episode() for _ in range(4)]  # returns although not one episode is written yet
    assert all(ep.written for ep in episodes) and slow.episodes == [] and sink.pending == 4
    slow.release.set()
    assert sink.flush(timeout_s=10)
    assert sink.written == 4 and sink.pending == 0 and sink.failed == 0
    # In order, whole: episode ids as collected, every step with its padding row.
    assert [rows[0]["episode_id"] for rows, _ in slow.episodes] == [ep.episode_id for ep in episodes]
    assert all(len(rows) == 5 for rows, _ in slow.episodes)
    assert sink.close(timeout_s=5)


def test_a_full_queue_holds_the_loop_between_episodes():
    slow = BlockingSink()
    sink = BackgroundSink(slow, max_pending=2)
    loop = _loop(sink)
    done = []
    thread = threading.Thread(target=lambda: done.extend(loop.run_episode() for _ in range(4)), daemon=True)
    thread.start()
    time.sleep(0.5)
    # One episode is being written, two wait in the queue, the fourth (collected) waits to be queued: the loop is
    # held between episodes.
    assert loop.episodes == 3 and loop.total_steps == 20 and sink.pending == 4
    slow.release.set()
    thread.join(5)
    assert len(done) == 4 and sink.flush(5) and sink.written == 4


def test_close_abandons_what_cannot_be_written_in_time():
    slow = BlockingSink()
    sink = BackgroundSink(slow)
    loop = _loop(sink)
    for _ in range(3):
        loop.run_episode()
    assert sink.close(timeout_s=0.3) is False
    assert sink.written == 0 and sink.failed == 3 and slow.abandoned == 1  # the one in progress was told to stop


def test_a_failing_write_is_counted_and_the_thread_goes_on():
    class Flaky(ListSink):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def write_episode(self, rows, padding_row, should_stop=lambda: False, success=False):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("replay gone")
            return super().write_episode(rows, padding_row)

    flaky = Flaky()
    sink = BackgroundSink(flaky)
    loop = _loop(sink)
    loop.run_episode()
    loop.run_episode()
    assert sink.flush(5) and (sink.written, sink.failed) == (1, 1) and len(flaky.episodes) == 1


# ---- the command channel ---------------------------------------------------------------------------------------
def test_commands_are_taken_once_in_order_and_answered(tmp_path):
    inbox = Inbox(tmp_path)
    first = submit(tmp_path, "attach", {"robot": {"name": "a"}})
    second = submit(tmp_path, "label", {"robot": "a", "outcome": "success"})
    taken = inbox.take()
    assert [c["id"] for c in taken] == [first, second] and [c["op"] for c in taken] == ["attach", "label"]
    assert inbox.take() == []  # each runs at most once
    inbox.answer(taken[0], ok=True, actor_id=7)
    assert wait_answer(tmp_path, first, 1.0) == {**wait_answer(tmp_path, first, 1.0), "ok": True, "actor_id": 7}


def test_an_unanswered_command_is_withdrawn_and_never_runs_later(tmp_path):
    Inbox(tmp_path)
    cmd = submit(tmp_path, "detach", {"robot": "a"})
    with pytest.raises(ControlError, match="no answer from the run's driver within"):
        wait_answer(tmp_path, cmd, 0.3)
    assert Inbox(tmp_path).take() == []


def test_a_malformed_command_file_gets_an_error_answer_naming_the_file(tmp_path):
    inbox = Inbox(tmp_path)
    (inbox.inbox / "123-bad.json").write_text('{"op": "explode", "args": {}}')
    (inbox.inbox / "124-worse.json").write_text("not json")
    assert inbox.take() == []
    bad = json.loads((inbox.done / "123-bad.json").read_text())
    worse = json.loads((inbox.done / "124-worse.json").read_text())
    assert bad["ok"] is False and "123-bad.json" in bad["error"] and "op" in bad["error"]
    assert worse["ok"] is False and "124-worse.json" in worse["error"]
    with pytest.raises(ControlError, match="unknown command"):
        submit(tmp_path, "reboot", {})


@pytest.mark.parametrize("tree, needle", [
    ({"name": "w"}, "server"),
    ({"name": "w", "server": "h:1", "imagesize": 64}, "imagesize"),
    ({"name": "w", "server": "h:1", "image": False, "reward_classifier": "c.pt"}, "reward_classifier"),
    ({"name": "w", "server": "h:1", "reward_threshold": 1.5}, "reward_threshold"),
    ("widowx", "mapping"),
])
def test_an_attached_robots_config_is_validated_naming_the_key(tree, needle):
    with pytest.raises(ConfigError, match=needle):
        robot_from_dict(tree)


def test_a_valid_attached_robot_config():
    robot = robot_from_dict({"name": "w", "server": "h:1", "resource": "widowx_1", "image_size": 64})
    assert (robot.name, robot.resource, robot.image_size, robot.swap_weights) == ("w", "widowx_1", 64, "episode")
