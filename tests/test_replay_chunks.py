"""Action-chunk items (flow policies, OGPO's chunked TD) through a real Reverb server: what the learner samples is
the chunk an actor executed, cut at the episode's end."""

from __future__ import annotations

import numpy as np
import pytest
import reverb

from fleetrl.config import ReplayConfig
from fleetrl.distributed.replay import (
    DEMOS_TABLE,
    SUCCESS_TABLE,
    EpisodeWriter,
    item_signature,
    make_dataset,
    online_table,
    split_sample,
)
from tests.test_replay import _episode

H = 3


@pytest.fixture
def server(dict_spec):
    cfg = ReplayConfig(capacity=10_000, min_size=1, updates_per_step=1000.0, rate_tolerance_steps=100_000)
    demos = reverb.Table(name=DEMOS_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                         max_size=1000, rate_limiter=reverb.rate_limiters.MinSize(1),
                         signature=item_signature(dict_spec, H))
    success = reverb.Table(name=SUCCESS_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                           max_size=1000, rate_limiter=reverb.rate_limiters.MinSize(1),
                           signature=item_signature(dict_spec, H))
    srv = reverb.Server([online_table(dict_spec, cfg, batch_size=8, horizon=H), demos, success])
    yield srv
    srv.stop()


def _sample_all(address, spec, table, n_items):
    """Every item of the table at least once (keyed by item key), through the dataset path."""
    seen = {}
    for sample in make_dataset(address, 64, table).as_numpy_iterator():
        batch = split_sample(spec, sample.data)
        for i, key in enumerate(sample.info.key):
            seen[int(key)] = {f: (v[i] if not isinstance(v, dict) else {k: x[i] for k, x in v.items()})
                              for f, v in vars(batch).items()}
        if len(seen) == n_items:
            return list(seen.values())


def test_chunk_items_hold_the_executed_chunk_and_stop_at_the_episode_end(dict_spec, server):
    rng = np.random.default_rng(0)
    address = f"localhost:{server.port}"
    client = reverb.Client(address)
    writer = EpisodeWriter(client, dict_spec, horizon=H, demo_table=DEMOS_TABLE)
    episodes = {}
    for ep, (length, terminated) in enumerate([(7, True), (2, False), (4, False)]):
        rows, pad, obs_seq = _episode(dict_spec, 100 + ep, length, version=10 * ep, terminated=terminated, rng=rng)
        assert writer.write_episode(rows, pad)
        episodes[100 + ep] = (rows, obs_seq, terminated)
    assert writer.flush()
    # One item per step (not per chunk boundary): 7 + 2 + 4.
    assert client.server_info()["online"].current_size == 13

    items = _sample_all(address, dict_spec, "online", 13)
    assert len(items) == 13
    checked = 0
    for item in items:
        rows, obs_seq, terminated = episodes[int(item["episode_id"])]
        t = int(item["policy_version"]) - rows[0]["policy_version"]  # _episode numbers versions by step
        n = min(H, len(rows) - t)
        assert np.array_equal(item["obs"]["state"], rows[t]["obs"]["state"])
        assert np.array_equal(item["next_obs"]["state"], obs_seq[t + n]["state"])  # after the chunk, or final
        assert np.array_equal(item["next_obs"]["image"], obs_seq[t + n]["image"])
        assert item["action"].shape == (H, 2)
        assert np.allclose(item["action"][:n], [rows[t + i]["action"] for i in range(n)])
        assert np.allclose(item["action"][n:], 0)  # padding past the end
        assert item["discount"].tolist() == [1.0] * n + [0.0] * (H - n)
        assert np.allclose(item["reward"], [rows[t + i]["reward"] for i in range(n)] + [0.0] * (H - n))
        ends_inside = t + n == len(rows)
        assert bool(item["terminated"]) == (ends_inside and terminated)
        assert bool(item["truncated"]) == (ends_inside and not terminated)
        assert item["mc_return"] == pytest.approx(rows[t]["mc_return"])
        assert bool(item["is_intervention"]) == any(rows[t + i]["is_intervention"] for i in range(n))
        checked += 1
    assert checked == 13

    # Demos: every chunk with a person's step in it, once.
    expected_demos = sum(any(rows[t + i]["is_intervention"] for i in range(min(H, len(rows) - t)))
                         for rows, _, _ in episodes.values() for t in range(len(rows)))
    assert client.server_info()[DEMOS_TABLE].current_size == expected_demos == writer.demo_items_created


def test_a_dataset_episode_without_an_end_flag_still_ends_its_chunks(dict_spec, server):
    rng = np.random.default_rng(1)
    rows, pad, _ = _episode(dict_spec, 7, 2, version=0, terminated=False, rng=rng)
    rows[-1]["truncated"] = np.asarray(False)  # a dataset that just stops
    address = f"localhost:{server.port}"
    writer = EpisodeWriter(reverb.Client(address), dict_spec, horizon=H)
    assert writer.write_episode(rows, pad) and writer.flush()
    items = _sample_all(address, dict_spec, "online", 2)
    assert sorted(it["discount"].tolist() for it in items) == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert all(bool(it["truncated"]) and not bool(it["terminated"]) for it in items)


def test_horizon_one_keeps_the_transition_layout(dict_spec):
    sig, chunk = item_signature(dict_spec), item_signature(dict_spec, 4)
    assert sig["f32"].shape.rank == 1 and chunk["f32"].shape.as_list()[0] == 4
    assert sig["obs"]["state"].shape.as_list() == [2, 3] and chunk["obs"]["state"].shape.as_list() == [5, 3]
    with pytest.raises(ValueError, match="horizon"):
        item_signature(dict_spec, 0)


def test_every_chunk_of_a_successful_episode_also_goes_to_the_success_table(dict_spec, server):
    rng = np.random.default_rng(2)
    address = f"localhost:{server.port}"
    client = reverb.Client(address)
    writer = EpisodeWriter(client, dict_spec, horizon=H, success_table=SUCCESS_TABLE)
    for ep, (length, success) in enumerate([(5, True), (4, False), (3, True)]):
        rows, pad, _ = _episode(dict_spec, 200 + ep, length, version=0, terminated=success, rng=rng)
        assert writer.write_episode(rows, pad, success=success)
    assert writer.flush()
    assert client.server_info()[SUCCESS_TABLE].current_size == 5 + 3 == writer.success_items_created
    items = _sample_all(address, dict_spec, SUCCESS_TABLE, 8)
    assert sorted({int(it["episode_id"]) for it in items}) == [200, 202]
