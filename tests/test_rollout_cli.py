"""``fleetrl envs`` / ``collect`` / ``view`` and the rollout module behind them: datasets written end to end and
reproducible, refusals that leave nothing behind, Ctrl-C keeping finished episodes, videos.

Most commands run in-process through typer's ``CliRunner``; the ones that import robosuite (whose logger binds the
stream it was imported under) or need a real signal run ``python -m fleetrl.cli`` as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import imageio.v2 as imageio
import numpy as np
import pytest
from typer.testing import CliRunner

import fleetrl.envs.rollout as rollout
from fleetrl.cli import app
from fleetrl.datasets import dataset_info, load_episodes
from fleetrl.envs.registry import WIDOWX_IDS, fleet_env_ids
from fleetrl.envs.robosuite_env import ROBOSUITE_TASKS
from fleetrl.envs.widowx.tasks import TASKS

REPO = pathlib.Path(__file__).resolve().parents[1]
REACH = WIDOWX_IDS["reach"]


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetrl.cli", *map(str, args)], capture_output=True, text=True,
                          env=_subprocess_env(), cwd=REPO, timeout=timeout)


# --- fleetrl envs ---------------------------------------------------------------------------------------------


def test_envs_json_lists_every_env_with_spaces_and_limits():
    proc = _run_cli("envs", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)  # stdout is pure JSON; logs go to stderr
    assert [r["id"] for r in rows] == fleet_env_ids()
    by_id = {r["id"]: r for r in rows}
    for task, env_id in WIDOWX_IDS.items():
        r = by_id[env_id]
        spec = TASKS[task]
        object_dim = 7 * len(spec.objects) + 3 * len(spec.markers)
        assert r["max_episode_steps"] == spec.episode_steps
        assert r["action_space"] == "[-1, 1] float32(7)"
        assert "state float32(7)" in r["observation_space"]
        assert "joints [-6.28319, 6.28319] float32(6)" in r["observation_space"]
        assert f"object float32({object_dim})" in r["observation_space"]
        assert "image" not in r["observation_space"]  # images are off by default
    for name, kwargs in ROBOSUITE_TASKS.items():
        r = by_id[f"fleetrl/Robosuite-{name}-v0"]
        assert r["horizon"] == kwargs["horizon"] and r["max_episode_steps"] is None
        assert r["action_space"] == "[-1, 1] float32(7)"
        assert "state float32(7)" in r["observation_space"] and "joints float32(7)" in r["observation_space"]
    assert len(rows) == len(WIDOWX_IDS) + len(ROBOSUITE_TASKS)


# --- fleetrl collect ------------------------------------------------------------------------------------------


def test_collect_writes_a_reproducible_dataset(tmp_path):
    out = tmp_path / "reach.h5"
    result = _cli("collect", "--env", REACH, "--episodes", 3, "--out", out, "--noise", 0.5)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 3 and summary["interrupted"] is False and summary["out"] == str(out)
    assert "episode 3/3" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["reach.h5"]  # no temporary file left

    info = dataset_info(out)
    assert (info["env_id"], info["policy"], info["noise"], info["seed"]) == (REACH, "scripted", 0.5, 0)
    assert info["num_episodes"] == 3
    episodes = load_episodes(out)
    assert [e.attrs["seed"] for e in episodes] == [0, 1, 2]
    for e in episodes:
        assert 1 <= e.length <= TASKS["reach"].episode_steps
        assert set(e.observations) == {"state", "joints", "object"}
        assert all(v.shape[0] == e.length + 1 for v in e.observations.values())
        assert e.actions.dtype == np.float32 and e.actions.shape == (e.length, 7)
        assert np.all(np.abs(e.actions) <= 1.0)
        assert e.terminated[-1] or e.truncated[-1]
    assert info["total_steps"] == sum(e.length for e in episodes)

    # The same env, policy and seed outside the CLI give exactly the stored episodes (noise included).
    env, policy = rollout.make_rollout_env(REACH, "scripted", 0.5)
    try:
        for seed, stored in enumerate(episodes):
            again = rollout.run_episode(env, policy, seed)
            assert np.array_equal(again.actions, stored.actions)
            assert np.array_equal(again.rewards, stored.rewards)
            assert np.array_equal(again.terminated, stored.terminated)
            assert np.array_equal(again.success, stored.success)
            assert set(again.observations) == set(stored.observations)
            for k in stored.observations:
                assert np.array_equal(again.observations[k], stored.observations[k]), k
    finally:
        env.close()


def test_collect_stores_images_when_asked(tmp_path):
    out = tmp_path / "img.h5"
    result = _cli("collect", "--env", REACH, "--episodes", 2, "--out", out,
                  "--env-kwarg", "image=true", "--env-kwarg", "image_size=64")
    assert result.exit_code == 0, result.output
    info = dataset_info(out)
    assert info["obs_spec"]["image"] == {"shape": [64, 64, 3], "dtype": "uint8"}
    for e in load_episodes(out):
        images = e.observations["image"]
        assert images.dtype == np.uint8 and images.shape == (e.length + 1, 64, 64, 3)
        assert images.std() > 10
    assert "image" in info["env_kwargs"]


def test_collect_refuses_an_existing_file_unless_overwrite(tmp_path):
    out = tmp_path / "data.h5"
    assert _cli("collect", "--env", REACH, "--episodes", 1, "--out", out).exit_code == 0
    before = _sha256(out)

    result = _cli("collect", "--env", REACH, "--episodes", 1, "--out", out, "--seed", 5)
    assert result.exit_code != 0
    assert "exists" in result.output and "--overwrite" in result.output
    assert _sha256(out) == before
    assert sorted(os.listdir(tmp_path)) == ["data.h5"]

    result = _cli("collect", "--env", REACH, "--episodes", 1, "--out", out, "--seed", 5, "--overwrite")
    assert result.exit_code == 0, result.output
    assert _sha256(out) != before
    assert [e.attrs["seed"] for e in load_episodes(out)] == [5]
    assert sorted(os.listdir(tmp_path)) == ["data.h5"]


@pytest.mark.parametrize("args, expected", [
    (["--env", "fleetrl/WidowXNope-v0"], ["--env", "WidowXNope"]),
    (["--env", REACH, "--policy", "teleop"], ["--policy", "teleop"]),
    (["--env", REACH, "--episodes", "0"], ["--episodes", "got 0"]),
    (["--env", REACH, "--noise", "-1"], ["--noise"]),
])
def test_collect_bad_options_fail_cleanly(tmp_path, args, expected):
    out = tmp_path / "x.h5"
    full = ["collect", "--episodes", "2", "--out", str(out), *args]  # a later --episodes wins
    result = _cli(*full)
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    for text in expected:
        assert text in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert os.listdir(tmp_path) == []


def test_collect_into_a_missing_directory_fails_naming_the_path(tmp_path):
    out = tmp_path / "missing" / "x.h5"
    result = _cli("collect", "--env", REACH, "--episodes", 1, "--out", out)
    assert result.exit_code == 2
    assert str(out) in result.stderr and "does not exist" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("part", ["[v1]", "[/v1]"])
def test_error_messages_show_brackets_verbatim(tmp_path, part):
    out = tmp_path / part / "x.h5"
    result = _cli("collect", "--env", REACH, "--episodes", 1, "--out", out)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.exception!r}"
    assert str(out) in result.stderr


def test_collect_scripted_on_robosuite_says_there_is_no_expert(tmp_path):
    out = tmp_path / "rs.h5"  # Lift has an expert (tests/test_robosuite_expert.py); Door has none
    proc = _run_cli("collect", "--env", "fleetrl/Robosuite-Door-v0", "--episodes", 1, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "--policy scripted" in proc.stderr and "no scripted expert" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwarg", ["image_size=8", "no_such_option=1", "image", "image_size=[1"])
def test_collect_bad_env_kwarg_fails_cleanly(tmp_path, kwarg):
    result = _cli("collect", "--env", REACH, "--episodes", 1, "--out", tmp_path / "x.h5", "--env-kwarg", kwarg)
    assert os.listdir(tmp_path) == []
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.exception!r}"
    assert kwarg.split("=")[0] in result.stderr


# --- Ctrl-C ---------------------------------------------------------------------------------------------------


def test_interrupt_mid_episode_keeps_the_finished_episodes(tmp_path, monkeypatch):
    """In-process and deterministic: KeyboardInterrupt from inside the 3rd episode's stepping."""
    finished: list[int] = []
    calls = {"n": 0}
    act = rollout._Policy.act

    def interrupting_act(self, obs):
        if len(finished) == 2:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return act(self, obs)

    monkeypatch.setattr(rollout._Policy, "act", interrupting_act)
    out = tmp_path / "lift.h5"
    summary = rollout.collect(WIDOWX_IDS["lift"], 10, out, progress=lambda i, ep: finished.append(i))
    assert calls["n"] == 5  # the interrupt came mid-episode, after 4 steps of episode 3
    assert summary["interrupted"] is True and summary["episodes"] == 2 and summary["out"] == str(out)
    episodes = load_episodes(out)
    assert [e.attrs["seed"] for e in episodes] == [0, 1]
    assert all(e.terminated[-1] or e.truncated[-1] for e in episodes)
    assert os.listdir(tmp_path) == ["lift.h5"]


def test_interrupt_in_the_progress_callback_keeps_the_finished_episodes(tmp_path):
    def progress(i, episode):
        if i == 1:  # both episodes are written when the callback runs
            raise KeyboardInterrupt

    out = tmp_path / "reach.h5"
    try:
        summary = rollout.collect(REACH, 5, out, progress=progress)
    except KeyboardInterrupt:
        summary = None  # must not reach pytest, which would stop the session
    assert summary is not None, "KeyboardInterrupt escaped collect()"
    assert summary["interrupted"] and summary["episodes"] == 2
    assert [e.attrs["seed"] for e in load_episodes(out)] == [0, 1]


def test_sigint_while_an_episode_is_written_is_held_until_it_is_written(tmp_path, monkeypatch):
    """A real SIGINT delivered inside ``writer.add`` (the 2nd episode): the episode is still written, then
    collection stops with both episodes in the file."""
    add = rollout.EpisodeFileWriter.add
    calls = {"n": 0}

    def add_with_sigint(self, episode):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled at once, in this (the main) thread
        return add(self, episode)

    monkeypatch.setattr(rollout.EpisodeFileWriter, "add", add_with_sigint)
    out = tmp_path / "reach.h5"
    summary = rollout.collect(REACH, 5, out)
    assert summary["interrupted"] is True and summary["episodes"] == 2
    assert [e.attrs["seed"] for e in load_episodes(out)] == [0, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the guard put Python's handler back


def test_sigint_keeps_finished_episodes(tmp_path):
    """A real SIGINT to ``python -m fleetrl.cli collect``. The random policy makes every episode the full 120 steps
    (~0.5 s), so the signal, sent shortly after a progress line, lands while an episode is being stepped (a signal
    landing while an episode is written is held until it is written; the test above covers that path)."""
    out = tmp_path / "stack.h5"
    cmd = [sys.executable, "-m", "fleetrl.cli", "collect", "--env", WIDOWX_IDS["stack"], "--episodes", "1000",
           "--out", str(out), "--policy", "random"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str | None] = queue.Queue()
    stderr: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            stderr.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline, done = time.monotonic() + 90, 0
        while done < 2:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"collect ended early:\n{''.join(stderr)}"
            m = re.match(r"episode (\d+)/1000", line)
            if m:
                done = int(m.group(1))
        time.sleep(0.1)  # into the next episode's stepping
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == 130, "".join(stderr)
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    k = summary["episodes"]
    assert 2 <= k < 1000
    episodes = load_episodes(out)
    assert len(episodes) == k == dataset_info(out)["num_episodes"]
    assert [e.attrs["seed"] for e in episodes] == list(range(k))
    for e in episodes:
        assert e.length == TASKS["stack"].episode_steps and e.truncated[-1]  # complete, none cut short
        assert all(v.shape[0] == e.length + 1 for v in e.observations.values())
    assert os.listdir(tmp_path) == ["stack.h5"]  # no .stack.h5.tmp-* left


# --- fleetrl view ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_view_writes_a_video_of_the_episode(tmp_path, suffix):
    out = tmp_path / f"ep{suffix}"
    result = _cli("view", "--env", WIDOWX_IDS["lift"], "--out", out, "--size", 96)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["success"] is True
    frames = imageio.mimread(out)
    assert len(frames) == summary["frames"] == summary["steps"] + 1
    assert all(np.asarray(f).shape == (96, 96, 3) for f in frames)
    video = np.stack([np.asarray(f, np.int16) for f in frames])
    assert (np.abs(video[0] - video[-1]).max(axis=2) > 40).sum() > 20  # the arm and the block moved
    changes = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
    assert sum(c > 0.1 for c in changes) >= len(changes) // 2


def test_view_refuses_other_video_formats(tmp_path):
    out = tmp_path / "ep.avi"
    result = _cli("view", "--env", WIDOWX_IDS["lift"], "--out", out)
    assert result.exit_code == 2
    assert ".mp4" in result.stderr and ".gif" in result.stderr
    assert os.listdir(tmp_path) == []
