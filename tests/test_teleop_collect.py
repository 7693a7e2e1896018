"""Demonstrations before training (`fleetrl collect --teleop`): a recorded operator session replayed through the
same device interface a person uses; re-record drops the attempt and repeats its start, success ends it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from fleetrl.datasets import read_episodes
from fleetrl.envs.rollout import collect
from fleetrl.teleop.client import RecordedDevice, RecordedState

PUSH_X = [1.0, 0, 0, 0, 0, 0, 1.0]


def _session():
    return [RecordedState(0.0, PUSH_X, True), RecordedState(0.25, PUSH_X, True, ["rerecord"]),
            RecordedState(0.6, [0, 0, 0, 0, 0, 0, -1.0], True, ["success"])]


def test_collect_with_a_person_records_their_actions_and_honours_rerecord_and_success(tmp_path):
    out = tmp_path / "demos.h5"
    summary = collect("fleetrl/WidowXReach-v0", 2, out, device=RecordedDevice(_session()), rate_hz=20.0,
                      policy="teleop", max_episode_steps=30)
    assert summary["episodes"] == 2 and summary["rerecorded"] == 1
    first, second = list(read_episodes(out))
    # The re-recorded attempt is gone; its seed was demonstrated again and ended by the person's "success".
    assert first.attrs["seed"] == 0 and first.attrs["label"] == "success"
    assert first.truncated[-1] and not first.terminated[-1] and first.length < 30
    assert np.allclose(first.actions[0], PUSH_X) and np.allclose(first.actions[-1], [0, 0, 0, 0, 0, 0, -1.0])
    # The tcp moved as the person pushed it: +x over the first steps.
    assert first.observations["state"][5, 0] - first.observations["state"][0, 0] > 0.05
    # The recording's last state stays: the second episode runs to the time limit with that action.
    assert second.attrs["seed"] == 1 and "label" not in second.attrs and second.length == 30
    assert np.allclose(second.actions, [0, 0, 0, 0, 0, 0, -1.0])


def test_collect_teleop_from_the_command_line_and_its_errors(tmp_path):
    recording = tmp_path / "session.jsonl"
    recording.write_text("\n".join(json.dumps(s.__dict__) for s in _session()))
    out = tmp_path / "demos.h5"
    base = [sys.executable, "-m", "fleetrl.cli", "collect", "--env", "fleetrl/WidowXReach-v0", "--episodes", "1",
            "--out", str(out), "--rate-hz", "20", "--env-kwarg", "max_episode_steps=30"]
    done = subprocess.run([*base, "--teleop", "recorded", "--recording", str(recording)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["episodes"] == 1
    assert next(iter(read_episodes(out))).attrs["label"] == "success"
    bad = subprocess.run([*base, "--teleop", "joystick", "--overwrite"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown teleop device 'joystick'" in bad.stderr
    pend = subprocess.run([sys.executable, "-m", "fleetrl.cli", "collect", "--env", "Pendulum-v1", "--episodes", "1",
                           "--out", str(tmp_path / "p.h5"), "--teleop", "recorded", "--recording", str(recording)],
                          capture_output=True, text=True, timeout=120)
    assert pend.returncode == 2 and "7-D Bridge actions" in pend.stderr
    (tmp_path / "junk.jsonl").write_text("not json\n")
    junk = subprocess.run([*base, "--overwrite", "--teleop", "recorded", "--recording", str(tmp_path / "junk.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert junk.returncode == 2 and "junk.jsonl line 1" in junk.stderr


def test_a_recorded_state_is_one_device_event_however_often_it_is_read():
    clock = [0.0]
    device = RecordedDevice([RecordedState(0.0, PUSH_X, True), RecordedState(0.5, PUSH_X, False, ["success"])],
                            clock=lambda: clock[0])
    first = device.read()
    clock[0] = 0.3
    again = device.read()
    assert first.takeover and again.event_at == first.event_at and again.events == []
    clock[0] = 0.6
    last = device.read()
    assert not last.takeover and last.events == ["success"] and last.event_at != first.event_at  # a new event
