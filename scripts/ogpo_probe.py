"""Offline probe of OGPO's update on a dataset, without the fleet: what each term does to a flow BC policy.

Loads a flow BC checkpoint (``fleetrl pretrain`` with ``learner.algorithm=flow-bc``), cuts the dataset into the
chunks the learner would sample (H actions, padding past an episode's end masked, the next observation H steps
on), optionally warms the critic up alone, then runs :meth:`OGPO.update` on uniform chunk batches (and, for
success BC, on chunks of the dataset's successful episodes). Every ``--every`` updates it evaluates the policy
in the env, deterministic and stochastic, and prints the critic's mean value of the policy's chunks next to that
of the data's chunks: a policy whose success falls while its chunks' value rises is exploiting the critic.

It is a probe, not evidence: the data stay fixed (no new episodes), so the critic never sees its mistakes corrected.

    python scripts/ogpo_probe.py --checkpoint RUN/checkpoints/learner-0000002000.pt --dataset data/lift_mixed.h5 \\
        --updates 600 --every 200 --warmup 2000 --set success_bc=false
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import yaml

from fleetrl.checkpoint import load_checkpoint
from fleetrl.config import config_from_dict
from fleetrl.core import reset_policy
from fleetrl.datasets.sources import open_dataset
from fleetrl.envs.gym_adapter import make_env
from fleetrl.learners.builder import build_policy
from fleetrl.learners.flow import euler_sample
from fleetrl.learners.flow_bc import episode_chunks
from fleetrl.learners.ogpo import OGPO
from fleetrl.types import TransitionBatch, TransitionSpec


def rows(batch: TransitionBatch, idx: torch.Tensor) -> TransitionBatch:
    return batch.to(lambda t: t[idx])


def success_rate(algo: OGPO, spec: TransitionSpec, cfg, env, episodes: int, stochastic: bool) -> float:
    policy = build_policy(spec, cfg.learner)
    policy.load_weights(algo.policy_weights())
    wins = 0
    for e in range(episodes):
        obs, _ = env.reset(seed=9000 + e)
        reset_policy(policy)
        done, info = False, {}
        while not done:
            obs, _, terminated, truncated, info = env.step(policy.act(obs, deterministic=not stochastic))
            done = terminated or truncated
        wins += bool(info.get("success"))
    return wins / episodes


@torch.no_grad()
def chunk_values(algo: OGPO, probe: TransitionBatch, generator: torch.Generator) -> dict[str, float]:
    """The critic's mean value of the policy's zero-noise chunks, sampled chunks, and the data's chunks."""
    feat = algo.actor.features(probe.obs)
    critic_in = algo._critic_features(probe.obs, augment=False)
    out = {}
    for name, noise in (("q_policy_deterministic", torch.zeros(feat.shape[0], algo.actor.chunk_dim)),
                        ("q_policy_sampled", torch.randn((feat.shape[0], algo.actor.chunk_dim), generator=generator))):
        chunk = euler_sample(algo.actor.velocity, feat, algo.flow_cfg.denoise_steps, noise).clamp(-1, 1)
        out[name] = round(float(algo.critic(critic_in, chunk).mean()), 3)
    out["q_data"] = round(float(algo.critic(critic_in, algo._flat(probe.action)).mean()), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a flow BC checkpoint file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=0, help="critic-only updates before the first OGPO update")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per point")
    parser.add_argument("--set", nargs="*", default=[], help="learner.ogpo fields, KEY=VALUE (YAML values)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ppo", action="store_true", help="ppo_coef=0: success BC and chi2 only")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(data["meta"]["config"])
    spec = TransitionSpec.from_dict(data["meta"]["spec"])
    changes = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    if args.no_ppo:
        changes["ppo_coef"] = 0.0
    ogpo_cfg = dataclasses.replace(cfg.learner.ogpo, **changes)
    algo = OGPO(spec, ogpo_cfg, cfg.learner.flow, seed=args.seed, reward=cfg.learner.reward)
    algo.load_state_dict(data["algorithm"])  # a flow BC state: the actor (and old / reference) policy only

    chunks, success = episode_chunks(open_dataset(args.dataset), spec, cfg.learner.flow.horizon)
    n, winners = chunks.action.shape[0], torch.nonzero(success).squeeze(1)
    probe = rows(chunks, torch.arange(0, n, 7))
    g = torch.Generator().manual_seed(args.seed)
    env = make_env(cfg.env)

    def report(step: int, metrics: dict) -> None:
        line = {"update": step, "stochastic": success_rate(algo, spec, cfg, env, args.episodes, True),
                "deterministic": success_rate(algo, spec, cfg, env, args.episodes, False),
                **chunk_values(algo, probe, g), **{k: round(float(v), 4) for k, v in metrics.items()}}
        print(json.dumps(line), flush=True)

    for _ in range(args.warmup):
        loss, _ = algo.critic_loss(rows(chunks, torch.randint(0, n, (cfg.learner.batch_size,), generator=g)))
        algo.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        algo.critic_optim.step()
        with torch.no_grad():
            for target, online in algo._target_pairs:
                torch._foreach_lerp_(target, online, ogpo_cfg.target_tau)
    report(0, {})
    for step in range(1, args.updates + 1):
        batch = rows(chunks, torch.randint(0, n, (cfg.learner.batch_size,), generator=g))
        bc = rows(chunks, winners[torch.randint(0, len(winners), (ogpo_cfg.success_batch_size,), generator=g)])
        metrics = algo.update(batch, bc if len(winners) else None)
        if step % args.every == 0:
            report(step, metrics)
    env.close()


if __name__ == "__main__":
    main()
