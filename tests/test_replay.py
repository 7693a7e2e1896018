"""The transition schema through a real Reverb server: what the learner samples is what an actor wrote."""

from __future__ import annotations

import numpy as np
import pytest
import reverb

from fleetrl.config import ReplayConfig
from fleetrl.distributed.replay import BatchSource, EpisodeWriter, inserts_completed, online_table
from fleetrl.types import SCALAR_FIELDS


def _episode(spec, episode_id, length, version, terminated, rng):
    rows = []
    obs = {"state": rng.normal(size=3).astype(np.float32), "image": rng.integers(0, 255, (4, 4, 3), np.uint8)}
    obs_seq = [obs]
    for t in range(length):
        nxt = {"state": rng.normal(size=3).astype(np.float32), "image": rng.integers(0, 255, (4, 4, 3), np.uint8)}
        last = t == length - 1
        rows.append(spec.make_step(obs, rng.uniform(-1, 1, 2), reward=float(rng.normal()),
                                   terminated=terminated and last, truncated=(not terminated) and last,
                                   mc_return=float(rng.normal()), is_intervention=bool(t % 3 == 0),
                                   policy_version=version + t, actor_id=5, episode_id=episode_id))
        obs = nxt
        obs_seq.append(obs)
    return rows, spec.padding_step(obs, 5, episode_id), obs_seq


@pytest.fixture
def server(dict_spec):
    cfg = ReplayConfig(capacity=10_000, min_size=8, updates_per_step=1000.0, rate_tolerance_steps=100_000)
    srv = reverb.Server([online_table(dict_spec, cfg, batch_size=8)])
    yield srv
    srv.stop()


def test_sampled_transitions_equal_written_rows(dict_spec, server):
    rng = np.random.default_rng(0)
    client = reverb.Client(f"localhost:{server.port}")
    writer = EpisodeWriter(client, dict_spec)
    expected = {}
    for ep, (length, terminated) in enumerate([(7, True), (5, False)]):
        rows, pad, obs_seq = _episode(dict_spec, 100 + ep, length, version=10 * ep, terminated=terminated, rng=rng)
        assert writer.write_episode(rows, pad)
        for t, row in enumerate(rows):
            expected[row["obs"]["state"].tobytes()] = (row, obs_seq[t + 1])
    assert writer.flush()
    assert client.server_info()["online"].current_size == 12
    assert inserts_completed(client) == 12

    source = BatchSource(f"localhost:{server.port}", dict_spec, batch_size=8)
    try:
        seen = set()
        for _ in range(20):
            batch = source.next(timeout_s=10)
            assert batch is not None
            for i in range(8):
                key = batch.obs["state"][i].numpy().tobytes()
                row, next_obs = expected[key]
                seen.add(key)
                np.testing.assert_array_equal(batch.obs["image"][i].numpy(), row["obs"]["image"])
                np.testing.assert_array_equal(batch.action[i].numpy(), row["action"])
                # The next observation is the following row's (or, at the end, the padding row's) observation.
                np.testing.assert_array_equal(batch.next_obs["state"][i].numpy(), next_obs["state"])
                np.testing.assert_array_equal(batch.next_obs["image"][i].numpy(), next_obs["image"])
                for field in SCALAR_FIELDS:
                    got = getattr(batch, field)[i].numpy()
                    assert got.dtype == SCALAR_FIELDS[field], field
                    assert got == row[field], field
        assert len(seen) == 12  # every written transition was sampled at least once
    finally:
        source.close()


def test_terminal_and_truncated_discounts(dict_spec):
    rng = np.random.default_rng(1)
    rows, _, _ = _episode(dict_spec, 1, 3, version=0, terminated=True, rng=rng)
    assert [float(r["discount"]) for r in rows] == [1.0, 1.0, 0.0]
    rows, _, _ = _episode(dict_spec, 2, 3, version=0, terminated=False, rng=rng)
    assert [float(r["discount"]) for r in rows] == [1.0, 1.0, 1.0]  # a time limit is not a terminal state
    assert bool(rows[-1]["truncated"]) and not bool(rows[-1]["terminated"])


def test_schema_refuses_wrong_shapes(dict_spec):
    obs = {"state": np.zeros(3, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
    with pytest.raises(ValueError, match="action"):
        dict_spec.make_step(obs, np.zeros(3), reward=0, terminated=False, truncated=False, mc_return=0,
                            is_intervention=False, policy_version=0, actor_id=0, episode_id=0)
    with pytest.raises(ValueError, match="image"):
        dict_spec.make_step({"state": obs["state"]}, np.zeros(2), reward=0, terminated=False, truncated=False,
                            mc_return=0, is_intervention=False, policy_version=0, actor_id=0, episode_id=0)


def test_spec_round_trips_through_plain_data(dict_spec):
    from fleetrl.types import TransitionSpec

    assert TransitionSpec.from_dict(dict_spec.to_dict()) == dict_spec


def test_rate_limiter_blocks_writer_until_stop(dict_spec):
    """With the learner absent, inserts beyond the error buffer block; a stop request returns False."""
    cfg = ReplayConfig(capacity=1000, min_size=2, updates_per_step=1.0, rate_tolerance_steps=3)
    srv = reverb.Server([online_table(dict_spec, cfg, batch_size=2)])
    try:
        writer = EpisodeWriter(reverb.Client(f"localhost:{srv.port}"), dict_spec, flush_timeout_ms=200)
        # Longer than the 32 unconfirmed items the writer allows, so it must wait for the (absent) learner.
        rows, pad, _ = _episode(dict_spec, 1, 100, version=0, terminated=True, rng=np.random.default_rng(2))
        calls = []
        assert writer.write_episode(rows, pad, should_stop=lambda: calls.append(1) or len(calls) > 2) is False
        assert len(calls) == 3
    finally:
        srv.stop()
