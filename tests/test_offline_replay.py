"""The ``offline`` Reverb table on a real in-process server: loading, Monte-Carlo returns, refusals, batch mixing."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import reverb
import torch

from fleetrl.config import DatasetConfig, LearnerConfig, RewardConfig, config_from_dict
from fleetrl.datasets import DatasetError, Episode, EpisodeFileWriter
from fleetrl.distributed.offline import load_offline, offline_table, table_size
from fleetrl.distributed.replay import (
    EpisodeWriter,
    make_batch_source,
    online_table,
)
from fleetrl.learners.builder import returns_fn
from fleetrl.types import ArraySpec, TransitionSpec, monte_carlo_returns

F32 = np.dtype(np.float32)
SPEC = TransitionSpec(obs={"state": ArraySpec((3,), F32), "image": ArraySpec((4, 4, 3), np.dtype(np.uint8))},
                      action=ArraySpec((2,), F32))
LEARNER = LearnerConfig(reward=RewardConfig(scale=2.0, bias=-1.0, sparse=True, negative=0.0))


def make_episode(rng: np.random.Generator, length: int, success: bool, seed: int) -> Episode:
    rewards = np.zeros(length, np.float32)
    rewards[-1] = 1.0 if success else 0.0
    end = np.zeros(length, bool)
    end[-1] = True
    return Episode(observations={"state": rng.normal(size=(length + 1, 3)).astype(np.float32),
                                 "image": rng.integers(0, 255, (length + 1, 4, 4, 3), dtype=np.uint8),
                                 "extra": np.zeros((length + 1, 1), np.float32)},
                   actions=rng.uniform(-1, 1, (length, 2)).astype(np.float32), rewards=rewards,
                   terminated=end if success else np.zeros(length, bool), truncated=np.zeros(length, bool) if success
                   else end, success=end & success, attrs={"seed": seed})


@pytest.fixture
def dataset(tmp_path: pathlib.Path) -> tuple[pathlib.Path, list[Episode]]:
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, length, success, i)
                for i, (length, success) in enumerate([(5, True), (4, False), (6, True)])]
    path = tmp_path / "data.h5"
    with EpisodeFileWriter(path) as writer:
        for ep in episodes:
            writer.add(ep)
    return path, episodes


def _server(capacity: int = 1000) -> reverb.Server:
    return reverb.Server([offline_table(SPEC, capacity)])


def test_every_transition_is_loaded_with_its_mc_return_and_next_observation(dataset):
    path, episodes = dataset
    server = _server()
    address = f"localhost:{server.port}"
    try:
        summary = load_offline(reverb.Client(address), SPEC, [DatasetConfig(path=str(path))], 1000,
                               returns_fn(LEARNER))
        total = sum(e.length for e in episodes)
        assert summary["transitions"] == total == table_size(reverb.Client(address))
        assert summary["datasets"][0]["success_rate"] == pytest.approx(2 / 3)
        states = np.concatenate([e.observations["state"][:-1] for e in episodes])  # the learner's state vector
        np.testing.assert_allclose(summary["obs_stats"]["mean"], states.mean(0), rtol=1e-5)
        np.testing.assert_allclose(summary["obs_stats"]["std"], states.std(0), rtol=1e-4)
        cfg = config_from_dict({"learner": {"batch_size": 64}, "replay": {"min_size": 64}})
        source = make_batch_source(address, SPEC, cfg, "cpu", offline_only=True)
        try:
            seen: dict[tuple[int, int], tuple] = {}
            for _ in range(50):
                batch = source.next(timeout_s=10)
                assert batch is not None
                for i in range(64):
                    ep = -int(batch.episode_id[i]) - 1
                    state = batch.obs["state"][i].numpy()
                    t = int(np.flatnonzero((episodes[ep].observations["state"][:-1] == state).all(axis=1))[0])
                    seen[(ep, t)] = (batch, i)
                if len(seen) == total:
                    break
        finally:
            source.close()
        assert len(seen) == total
        for (ep, t), (batch, i) in seen.items():
            e = episodes[ep]
            want_g = monte_carlo_returns(e.rewards, bool(e.terminated[-1]), 0.99, 2.0, -1.0, -1.0)[t]
            assert float(batch.mc_return[i]) == pytest.approx(float(want_g), rel=1e-6)
            np.testing.assert_array_equal(batch.next_obs["image"][i].numpy(), e.observations["image"][t + 1])
            np.testing.assert_array_equal(batch.action[i].numpy(), e.actions[t])
            assert batch.obs["image"].dtype == torch.uint8  # images stay uint8 in replay and in the batch
            assert int(batch.actor_id[i]) == -1 and int(batch.policy_version[i]) == -1
            assert bool(batch.terminated[i]) == bool(e.terminated[t])
        failed = [g for (ep, _), (b, i) in seen.items() if ep == 1 for g in [float(b.mc_return[i])]]
        assert failed and all(g == pytest.approx(-1.0 / 0.01) for g in failed)  # failure forever: r_neg/(1-gamma)
    finally:
        server.stop()


def _bad_file(tmp_path: pathlib.Path, mutate, every_episode: bool) -> pathlib.Path:
    """Episode 1 (seed 7) is bad; so is episode 0 with ``every_episode`` (a file's episodes share one layout)."""
    rng = np.random.default_rng(1)
    first, second = make_episode(rng, 3, True, 0), make_episode(rng, 4, False, 7)
    path = tmp_path / "bad.h5"
    with EpisodeFileWriter(path) as writer:
        writer.add(mutate(first) if every_episode else first)
        writer.add(mutate(second))
    return path


def _replace_obs(ep: Episode, **obs) -> Episode:
    return Episode(observations={**ep.observations, **obs}, actions=ep.actions, rewards=ep.rewards,
                   terminated=ep.terminated, truncated=ep.truncated, success=ep.success, attrs=ep.attrs)


@pytest.mark.parametrize("mutate, named, episode", [
    (lambda e: _replace_obs(e, state=np.zeros((e.length + 1, 4), np.float32)),
     "observations/state has per-step shape (4,), the env's is (3,)", "episode 0 (episode (seed=0))"),
    (lambda e: Episode(observations={k: v for k, v in e.observations.items() if k != "image"}, actions=e.actions,
                       rewards=e.rewards, terminated=e.terminated, truncated=e.truncated, success=e.success,
                       attrs=e.attrs), "observations/image is missing", "episode 0 (episode (seed=0))"),
    (lambda e: Episode(observations=e.observations, actions=e.actions * 3, rewards=e.rewards,
                       terminated=e.terminated, truncated=e.truncated, success=e.success, attrs=e.attrs),
     "is outside [-1, 1]", "episode 1 (episode (seed=7))"),
])
def test_a_bad_episode_is_refused_naming_dataset_episode_and_key(tmp_path, mutate, named, episode):
    path = _bad_file(tmp_path, mutate, every_episode=episode.startswith("episode 0"))
    server = _server()
    try:
        with pytest.raises(DatasetError) as err:
            load_offline(reverb.Client(f"localhost:{server.port}"), SPEC, [DatasetConfig(path=str(path))], 1000,
                         returns_fn(LEARNER))
        msg = str(err.value)
        assert str(path) in msg and episode in msg and named in msg, msg
    finally:
        server.stop()


def test_nan_in_a_file_is_refused_by_the_reader_naming_the_key(tmp_path):
    path = tmp_path / "nan.h5"
    rng = np.random.default_rng(2)
    ep = make_episode(rng, 3, True, 0)
    with EpisodeFileWriter(path) as writer:
        writer.add(ep)
    import h5py

    with h5py.File(path, "r+") as h5:
        h5["episodes/000000/actions"][1, 0] = np.nan
    server = _server()
    try:
        with pytest.raises(DatasetError, match=r"actions is not finite at index \(1, 0\)"):
            load_offline(reverb.Client(f"localhost:{server.port}"), SPEC, [DatasetConfig(path=str(path))], 1000,
                         returns_fn(LEARNER))
    finally:
        server.stop()


def test_more_transitions_than_capacity_are_refused_before_any_eviction(dataset):
    path, episodes = dataset
    server = _server(capacity=10)
    try:
        with pytest.raises(DatasetError, match=r"offline.capacity \(10\)"):
            load_offline(reverb.Client(f"localhost:{server.port}"), SPEC, [DatasetConfig(path=str(path))], 10,
                         returns_fn(LEARNER))
        assert table_size(reverb.Client(f"localhost:{server.port}")) == 9  # the first two episodes, nothing evicted
    finally:
        server.stop()


def test_learner_batches_mix_offline_and_online_rows_in_the_configured_ratio(dataset):
    path, _ = dataset
    cfg = config_from_dict({"learner": {"batch_size": 40}, "replay": {"min_size": 40, "updates_per_step": 100},
                            "offline": {"datasets": [{"path": str(path)}], "ratio": 0.25}})
    server = reverb.Server([online_table(SPEC, cfg.replay, 30), offline_table(SPEC, 1000)])
    address = f"localhost:{server.port}"
    try:
        load_offline(reverb.Client(address), SPEC, cfg.offline.datasets, 1000, returns_fn(cfg.learner))
        writer = EpisodeWriter(reverb.Client(address), SPEC)
        rng = np.random.default_rng(3)
        for ep_id in range(8):  # 8 online episodes of 10 steps from actor 5
            rows = [SPEC.make_step({"state": rng.normal(size=3), "image": np.zeros((4, 4, 3), np.uint8)},
                                   np.zeros(2), reward=0.0, terminated=False, truncated=t == 9, mc_return=0.0,
                                   is_intervention=False, policy_version=1, actor_id=5, episode_id=ep_id)
                    for t in range(10)]
            writer.write_episode(rows, SPEC.padding_step(rows[-1]["obs"], 5, ep_id))
        writer.flush()
        source = make_batch_source(address, SPEC, cfg, "cpu")
        try:
            for _ in range(3):
                batch = source.next(timeout_s=10)
                assert batch is not None and batch.action.shape[0] == 40
                offline = (batch.actor_id == -1).numpy()
                assert offline[:10].all() and not offline[10:].any()  # 0.25 * 40 offline rows first, then online
        finally:
            source.close()
        writer.close()
    finally:
        server.stop()
