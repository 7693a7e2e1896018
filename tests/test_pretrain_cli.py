"""``fleetrl pretrain`` then ``fleetrl train --init-from``, through the command line with real Reverb, Ray, MuJoCo."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fleetrl.envs.rollout import collect

REPO = pathlib.Path(__file__).parents[1]
ENV = "fleetrl/WidowXReach-v0"
SMALL = ["env.id=" + ENV, "env.max_episode_steps=null", "env.success=info", "learner.algorithm=calql",
         "learner.batch_size=32", "learner.cql.hidden_dims=[16,16]", "learner.cql.num_actions=2",
         "logging.interval_s=0.5", "logging.live=false", "logging.wandb=false", "checkpoint.every_updates=1000"]


def _fleetrl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "fleetrl.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    data = root / "reach.h5"
    collect(ENV, 4, data, policy="scripted", noise=0.5, seed=0)
    proc = _fleetrl("pretrain", *SMALL, f"run_root={root / 'runs'}", f"offline.datasets=[{{path: {data}}}]",
                    "offline.pretrain_updates=40", "offline.pretrain_eval_episodes=2", "replay.min_size=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    return root, data, summary


def test_pretrain_writes_a_checkpoint_of_offline_updates_and_evaluates_it(pretrained):
    _, data, summary = pretrained
    assert summary["learner_steps"] == 40 and not summary["interrupted"]
    ckpt = torch.load(summary["checkpoint"], weights_only=False)
    assert ckpt["meta"]["phase"] == "pretrain" and ckpt["meta"]["learner_steps"] == 40
    # Every update was one Adam step of the critics on offline batches only.
    steps = {int(s["step"]) for s in ckpt["algorithm"]["critic_optim"]["state"].values()}
    assert steps == {40}
    assert summary["offline_transitions"] == ckpt["meta"]["offline"]["transitions"] > 0
    assert 0.0 <= summary["eval_success_rate"] <= 1.0
    rows = [json.loads(x) for x in (pathlib.Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["learner_steps"] == 40 and "learner/calql_bound_rate" in rows[-1]


def test_train_init_from_starts_the_fleet_from_the_pretrained_policy(pretrained):
    root, data, summary = pretrained
    # min_size above the run's env steps: the learner never updates, so the run's final policy must be exactly the
    # pretrained one, and the actors must have used it from their first step (no random warm-up).
    proc = _fleetrl("train", *SMALL, f"run_root={root / 'online'}", f"offline.datasets=[{{path: {data}}}]",
                    "total_env_steps=120", "replay.min_size=1000", "actors.num_sim=1", "actors.random_steps=500",
                    "--init-from", summary["run_dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((root / "online").iterdir())
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    final = torch.load(run_dir / "checkpoints" / latest["file"], weights_only=False)
    start = torch.load(summary["checkpoint"], weights_only=False)
    for key, value in start["policy"].items():
        np.testing.assert_array_equal(final["policy"][key], value, err_msg=key)
    assert latest["learner_steps"] == 0 and latest["env_steps"] >= 120


def test_init_from_a_checkpoint_of_another_network_shape_is_refused(pretrained, tmp_path):
    _, data, summary = pretrained
    proc = _fleetrl("train", *SMALL, "learner.cql.hidden_dims=[32,32]", f"run_root={tmp_path}",
                    f"offline.datasets=[{{path: {data}}}]", "--init-from", summary["run_dir"])
    assert proc.returncode == 2
    assert "--init-from" in proc.stderr and "does not fit this config's learner" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def test_a_dataset_of_another_env_is_refused_naming_episode_and_key(pretrained, tmp_path):
    _, data, _ = pretrained  # WidowX reach data offered to InvertedPendulum
    proc = _fleetrl("train", "env.id=InvertedPendulum-v5", "learner.batch_size=32", "replay.min_size=32",
                    f"run_root={tmp_path}", f"offline.datasets=[{{path: {data}}}]", "logging.wandb=false",
                    "logging.live=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "episode 0" in proc.stderr and "observations/state" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # refused up front: no run directory, no Ray


def test_a_bad_later_episode_is_refused_by_the_replay_loader_naming_it(pretrained, tmp_path):
    """Episode 0 passes the up-front check; the replay server's loader (inside Ray) finds episode 2 and the
    refusal reaches the command line naming it."""
    import dataclasses

    from fleetrl.datasets import EpisodeFileWriter
    from fleetrl.datasets.sources import open_dataset

    _, data, _ = pretrained
    bad = tmp_path / "bad.h5"
    with EpisodeFileWriter(bad) as writer:
        for i, e in enumerate(open_dataset(data)):
            writer.add(dataclasses.replace(e, actions=e.actions * 3) if i == 2 else e)
    proc = _fleetrl("train", *SMALL, "learner.batch_size=32", "replay.min_size=32", f"run_root={tmp_path / 'runs'}",
                    f"offline.datasets=[{{path: {bad}}}]")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "episode 2" in proc.stderr and "outside [-1, 1]" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_pretrain_refuses_a_bad_dataset_naming_it_and_leaves_no_run(pretrained, tmp_path):
    _, data, _ = pretrained
    proc = _fleetrl("pretrain", "env.id=InvertedPendulum-v5", "learner.batch_size=32", "replay.min_size=32",
                    f"run_root={tmp_path}", f"offline.datasets=[{{path: {data}}}]", "logging.wandb=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "episode 0" in proc.stderr and "observations/state" in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_pretrain_without_datasets_is_a_config_error(tmp_path):
    proc = _fleetrl("pretrain", f"run_root={tmp_path}")
    assert proc.returncode == 2 and "offline.datasets" in proc.stderr


def test_image_observations_run_the_whole_offline_path(tmp_path):
    """Camera frames from the dataset stay uint8 through Reverb, train the CNN encoders, and the evaluated policy
    reads rendered frames (a small encoder and 32-pixel images keep it fast on CPU)."""
    data = tmp_path / "reach_img.h5"
    collect(ENV, 2, data, policy="scripted", noise=0.5, seed=0, image=True, image_size=32)
    proc = _fleetrl("pretrain", *SMALL, f"run_root={tmp_path / 'runs'}", f"offline.datasets=[{{path: {data}}}]",
                    "env.kwargs={image: true, image_size: 32}", "learner.encoder.channels=[8,16]",
                    "learner.encoder.groups=4", "learner.encoder.out_dim=16", "offline.pretrain_updates=3",
                    "offline.pretrain_eval_episodes=1", "replay.min_size=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    ckpt = torch.load(summary["checkpoint"], weights_only=False)
    assert any(k.startswith("encoder.") for k in ckpt["policy"])  # the shipped policy carries its CNN
    assert {"actor_encoder", "critic_encoder", "target_critic_encoder"} <= set(ckpt["algorithm"])
    assert summary["learner_steps"] == 3 and "eval_success_rate" in summary
