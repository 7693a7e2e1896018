"""Flow BC with ``fleetrl pretrain``, then OGPO fine-tuning with ``fleetrl train --init-from`` (issue 8), through
the command line with real Reverb, Ray and MuJoCo: the actors execute the flow policy's chunks, replay stores
chunk items, successful episodes feed table ``success``, a (scripted) person's chunks feed ``demos``, and the
learner runs PPO inside the denoising chain."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import reverb
import torch

from fleetrl.config import batch_rows, load_config
from fleetrl.datasets.sources import open_dataset
from fleetrl.distributed.offline import offline_table
from fleetrl.distributed.replay import DEMOS_TABLE, SUCCESS_TABLE, make_dataset, online_table, split_sample
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.envs.rollout import collect
from fleetrl.learners.flow import flow_matching_loss
from fleetrl.learners.flow_bc import FlowBC, episode_chunks
from tests.test_pretrain_cli import _fleetrl

ENV = "fleetrl/WidowXReach-v0"
H = 3
COMMON = ["env.id=" + ENV, "env.max_episode_steps=null", "env.success=info", "learner.batch_size=32",
          f"learner.flow.horizon={H}", "learner.flow.denoise_steps=4", "learner.flow.hidden_dims=[32,32]",
          "learner.flow.time_features=8", "learner.ogpo.num_critics=3", "learner.ogpo.critic_hidden_dims=[32,32]",
          "learner.ogpo.ppo_states=16", "learner.ogpo.chains_per_state=4", "learner.ogpo.success_batch_size=16",
          "logging.interval_s=0.5", "logging.live=false", "logging.wandb=false", "checkpoint.every_updates=1000"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowbc")
    data = root / "reach.h5"
    collect(ENV, 6, data, policy="scripted", noise=0.3, seed=0)
    proc = _fleetrl("pretrain", *COMMON, "learner.algorithm=flow-bc", f"run_root={root / 'runs'}",
                    f"offline.datasets=[{{path: {data}}}]", "offline.pretrain_updates=300", "learner.flow.bc_lr=3e-3",
                    "offline.pretrain_eval_episodes=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, data, json.loads(proc.stdout)


def test_flow_bc_pretrain_clones_the_chunks_and_evaluates_the_chunk_policy(pretrained):
    _, data, summary = pretrained
    assert summary["learner_steps"] == 300
    ckpt = torch.load(summary["checkpoint"], weights_only=False)
    assert ckpt["algorithm"]["kind"] == "flow-bc"
    assert {int(s["step"]) for s in ckpt["algorithm"]["optim"]["state"].values()} == {300}
    assert ckpt["meta"]["config"]["learner"]["flow"]["horizon"] == H
    # The cloned flow fits the dataset's chunks much better than the same network untrained.
    cfg = load_config(None, [*COMMON, "learner.algorithm=flow-bc"])
    spec = transition_spec(cfg.env)
    trained, untrained = FlowBC(spec, cfg.learner.flow), FlowBC(spec, cfg.learner.flow)
    trained.load_state_dict(ckpt["algorithm"])
    batch = episode_chunks(open_dataset(str(data)), spec, H)[0]  # padding past an episode's end masked
    obs, chunks, masks = batch.obs, batch.action, batch.discount
    with torch.no_grad():
        losses = [flow_matching_loss(algo.actor.velocity, algo.actor.features(obs), chunks,
                                     torch.Generator().manual_seed(0), masks)[0].item()
                  for algo in (trained, untrained)]
    assert losses[0] < 0.7 * losses[1]
    assert 0.0 <= summary["eval_success_rate"] <= 1.0


def test_ogpo_fine_tunes_the_pretrained_flow_policy_across_the_fleet(pretrained):
    root, _, summary = pretrained
    overrides = [*COMMON, "learner.algorithm=ogpo", f"run_root={root / 'online'}", "total_env_steps=480",
                 "actors.num_sim=2", "replay.min_size=64", "replay.updates_per_step=0.25",
                 "replay.rate_tolerance_steps=64", "teleop.scripted_share=0.5", "demos.ratio=0.25"]
    proc = _fleetrl("train", *overrides, "--init-from", summary["run_dir"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((root / "online").iterdir())

    # The learner ran OGPO: critic and PPO steps, and the policy moved away from the pretrained one.
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    final = torch.load(run_dir / "checkpoints" / latest["file"], weights_only=False)
    start = torch.load(summary["checkpoint"], weights_only=False)
    assert latest["learner_steps"] > 0
    assert any(not np.array_equal(final["policy"][k], v) for k, v in start["policy"].items())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    learned = [r for r in rows if "learner/ppo_loss" in r]
    assert learned and {"learner/critic_loss", "learner/ratio_mean", "learner/clip_fraction"} <= set(learned[-1])

    # Replay, restored from the run's checkpoint: every online item is a chunk of H executed steps.
    cfg = load_config(None, overrides)
    spec = transition_spec(cfg.env)
    server = reverb.Server(
        tables=[online_table(spec, cfg.replay, batch_rows(cfg)["online"], H),
                offline_table(spec, cfg.learner.ogpo.success_capacity, name=SUCCESS_TABLE, horizon=H),
                offline_table(spec, cfg.demos.capacity, name=DEMOS_TABLE, horizon=H)],
        checkpointer=reverb.checkpointers.DefaultCheckpointer(path=str(run_dir / "replay")))
    try:
        info = reverb.Client(f"localhost:{server.port}").server_info()
        online_size, success_size = int(info["online"].current_size), int(info[SUCCESS_TABLE].current_size)
        assert online_size >= 480
        batch = next(make_dataset(f"localhost:{server.port}", 64, "online").as_numpy_iterator())
        chunks = split_sample(spec, batch.data)
        assert chunks.action.shape == (64, H, 7) and chunks.discount.shape == (64, H)
        assert np.all(np.abs(chunks.action) <= 1.0)
        acted = chunks.policy_version[~chunks.is_intervention]
        assert np.all(acted >= 0)  # the pretrained policy acted from the first step (no random warm-up)
        # `success`: the chunks of successful episodes, whole.
        episodes = [json.loads(x) for x in (run_dir / "episodes.jsonl").read_text().splitlines()]
        succeeded = {e["episode_id"]: e["length"] for e in episodes if e["success"] and e["written"]}
        assert success_size > 0  # the scripted operator's episodes succeed
        demos = split_sample(spec, next(make_dataset(f"localhost:{server.port}", 8, DEMOS_TABLE).as_numpy_iterator()
                                         ).data)
        assert demos.is_intervention.all() and demos.action.shape == (8, H, 7)
        if success_size:
            counts: collections.Counter = collections.Counter()
            seen = set()
            for sample in make_dataset(f"localhost:{server.port}", 16, SUCCESS_TABLE).as_numpy_iterator():
                b = split_sample(spec, sample.data)
                for key, ep in zip(sample.info.key, b.episode_id, strict=True):
                    if int(key) not in seen:
                        seen.add(int(key))
                        counts[int(ep)] += 1
                if len(seen) == success_size:
                    break
            assert set(counts) <= set(succeeded)
            assert all(counts[ep] == succeeded[ep] for ep in counts)
        assert success_size <= sum(succeeded.values())
    finally:
        server.stop()


def test_eval_runs_the_flow_policy_deterministically_or_as_the_actors_do(pretrained, monkeypatch):
    """``fleetrl eval`` scores the zero-noise chunk by default; ``--stochastic`` samples chunks from N(0, I) noise,
    as the actors do in training (a cloned noisy expert can differ a lot between the two)."""
    from fleetrl.evaluate import evaluate
    from fleetrl.learners.flow_policy import FlowChunkPolicy

    _, _, summary = pretrained
    flags: list[bool] = []
    act = FlowChunkPolicy.act
    monkeypatch.setattr(FlowChunkPolicy, "act", lambda self, obs, deterministic=False: (
        flags.append(deterministic), act(self, obs, deterministic))[1])
    det = [evaluate(summary["run_dir"], episodes=2, seed=7) for _ in range(2)]
    assert flags and all(flags) and not det[0]["stochastic"]
    assert det[0]["returns"] == det[1]["returns"]  # zero noise: the same episodes twice
    flags.clear()
    sto = evaluate(summary["run_dir"], episodes=2, seed=7, stochastic=True)
    assert flags and not any(flags) and sto["stochastic"]
