"""OGPO: the actor's action rate with a K-step flow policy vs a Gaussian policy, and OGPO learner updates/s.

Both parts use the simulated WidowX lift task's state observation spec (``fleetrl/WidowXLift-v0``), one torch thread.

Actor (what an actor process pays per env step for its action; the bare MuJoCo env step is measured beside it):

- ``gaussian``: :class:`GaussianPolicy` (256, 256), the policy of SAC / Cal-QL actors, one ``act`` per step;
- ``flow K=10, H=4, 4x512``: :class:`FlowChunkPolicy` with OGPO's paper sizes; it samples a chunk of H actions with
  K Euler steps every H-th ``act`` and pops the queued action otherwise, so the per-step figure is amortised;
- ``flow K=5, H=4, 2x256``: the scaled-down flow policy of ``configs/widowx_calql_evidence.yaml``;
- ``... per chunk``: one chunk sample alone (the latency of the step that samples, every H steps).

Learner: :meth:`OGPO.update` on synthetic chunk batches already in memory (batch 256; one critic step on the
ensemble, one PPO step on ``ppo_states x chains_per_state`` chains of K steps, the success-BC term on a second
batch, the EMA steps), with the paper's sizes (``OGPOConfig()``, ``FlowConfig()``) and the evidence config's. The
named baseline is fleetrl's own Cal-QL learner (``CQLConfig()``) on the same batches' first step, so the ratio says
what OGPO's chains cost next to the Gaussian learner the other algorithms use. CUDA is measured when
``torch.cuda.is_available()``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from _common import interleaved, parse_args, print_table, save, summary, timed_rate

from fleetrl.config import CQLConfig, EnvConfig, FlowConfig, OGPOConfig
from fleetrl.envs.gym_adapter import make_env, transition_spec
from fleetrl.learners.calql import CalQL
from fleetrl.learners.flow_policy import FlowChunkPolicy
from fleetrl.learners.ogpo import OGPO
from fleetrl.learners.policy import GaussianPolicy
from fleetrl.types import TransitionBatch, TransitionSpec

BATCH = 256
ENV = EnvConfig(id="fleetrl/WidowXLift-v0", max_episode_steps=None)
PAPER = (FlowConfig(), OGPOConfig())
EVIDENCE = (FlowConfig(horizon=4, denoise_steps=5, hidden_dims=(256, 256), time_features=16),
            OGPOConfig(num_critics=5, critic_hidden_dims=(128, 128), ppo_states=64, chains_per_state=8))


def observations(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` real observations of the lift task (random actions), so the policies see realistic inputs."""
    env = make_env(ENV)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return out


def actor_part(spec: TransitionSpec, steps: int, repeats: int) -> tuple[dict[str, Any], dict[str, float]]:
    obs = observations(256, 0)
    policies = {"gaussian (256, 256)": GaussianPolicy(spec, (256, 256), seed=0),
                "flow K=10, H=4, 4x512": FlowChunkPolicy(spec, PAPER[0], seed=0),
                "flow K=5, H=4, 2x256": FlowChunkPolicy(spec, EVIDENCE[0], seed=0)}

    def per_step(policy: Any) -> float:
        def work() -> int:
            for i in range(steps):
                policy.act(obs[i % len(obs)])
            return steps
        return timed_rate(work)

    def per_chunk(policy: FlowChunkPolicy) -> float:
        def work() -> int:
            for i in range(steps // 4):
                policy.reset()  # no chunk in hand: every act samples one
                policy.act(obs[i % len(obs)])
            return steps // 4
        return timed_rate(work)

    env = make_env(ENV)
    env.reset(seed=1)
    env.action_space.seed(1)

    def bare_env() -> float:
        def work() -> int:
            for _ in range(steps):
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    env.reset()
            return steps
        return timed_rate(work)

    variants = {name: (lambda p=p: per_step(p)) for name, p in policies.items()}
    for name, p in policies.items():
        if isinstance(p, FlowChunkPolicy):
            variants[f"{name} per chunk"] = lambda p=p: per_chunk(p)
    variants["bare env step (MuJoCo lift)"] = bare_env
    for p in policies.values():  # warm-up (allocations, first-call dispatch)
        for i in range(16):
            p.act(obs[i])
    values = interleaved(variants, repeats)
    env.close()
    med = {k: float(np.median(v)) for k, v in values.items()}
    gauss = med["gaussian (256, 256)"]
    bare_ms = 1e3 / med["bare env step (MuJoCo lift)"]
    ratios = {f"{k} / gaussian (actions/s)": med[k] / gauss for k in med if k.startswith("flow") and "chunk" not in k}
    ratios.update({f"{k}: ms per action / bare env step ms": (1e3 / med[k]) / bare_ms
                   for k in med if not k.startswith("bare")})
    return {k: {"per_s": summary(v)} for k, v in values.items()}, ratios


def chunk_batch(spec: TransitionSpec, horizon: int, batch: int, device: torch.device, seed: int) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    a = spec.action.shape[0]

    def obs() -> dict[str, torch.Tensor]:
        return {k: torch.randn((batch, *s.shape), generator=g) for k, s in spec.obs.items()}

    term = torch.rand(batch, generator=g) < 0.02
    out = TransitionBatch(obs=obs(), action=torch.rand((batch, horizon, a), generator=g) * 2 - 1,
                          reward=(torch.rand((batch, horizon), generator=g) < 0.1).float(),
                          discount=torch.ones(batch, horizon), terminated=term,
                          truncated=torch.zeros(batch, dtype=torch.bool), next_obs=obs(),
                          mc_return=torch.randn(batch, generator=g), is_intervention=torch.zeros(batch, dtype=bool),
                          policy_version=torch.zeros(batch, dtype=torch.int64),
                          actor_id=torch.zeros(batch, dtype=torch.int32), episode_id=torch.zeros(batch).long())
    return out.to(lambda t: t.to(device))


def learner_part(spec: TransitionSpec, device: torch.device, updates: int, max_s: float, warmup: int,
                 repeats: int) -> tuple[dict[str, Any], dict[str, float]]:
    algos: dict[str, tuple[Any, list[tuple[TransitionBatch, ...]]]] = {}
    for name, (flow, cfg) in {"ogpo paper sizes": PAPER, "ogpo evidence config": EVIDENCE}.items():
        memory = [(chunk_batch(spec, flow.horizon, BATCH, device, i), chunk_batch(spec, flow.horizon, BATCH, device,
                                                                                100 + i)) for i in range(4)]
        algos[name] = (OGPO(spec, cfg, flow, device, seed=0), memory)
    one_step = []
    for i in range(4):  # Cal-QL's transitions: one action and one reward per row
        b = chunk_batch(spec, 1, BATCH, device, i)
        one_step.append((dataclasses.replace(b, action=b.action[:, 0], reward=b.reward[:, 0],
                                             discount=b.discount[:, 0]),))
    algos["calql CQLConfig() (baseline)"] = (CalQL(spec, CQLConfig(), device, seed=0), one_step)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def rate(algo: Any, memory: list[tuple[TransitionBatch, ...]]) -> float:
        # The paper-size update takes seconds on one CPU thread: one warm-up update is enough there.
        for i in range(1 if algo.cfg is PAPER[1] else warmup):
            algo.update(*memory[i % len(memory)])
        sync()
        t0, n = time.perf_counter(), 0
        while n < updates and time.perf_counter() - t0 < max_s:
            algo.update(*memory[n % len(memory)])
            n += 1
        sync()
        return n / (time.perf_counter() - t0)

    values = interleaved({k: (lambda a=a, m=m: rate(a, m)) for k, (a, m) in algos.items()}, repeats)
    med = {k: float(np.median(v)) for k, v in values.items()}
    base = med["calql CQLConfig() (baseline)"]
    ratios = {f"{k} / calql": med[k] / base for k in med if k.startswith("ogpo")}
    return {k: {"updates_per_s": summary(v)} for k, v in values.items()}, ratios


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = args.repeats or 3
    torch.set_num_threads(1)
    spec = transition_spec(ENV)
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    steps = 400 if args.quick else 2000
    res, rat = actor_part(spec, steps, repeats)
    results["actor"], ratios["actor"] = res, rat
    rows = [["actor (cpu)", k, v["per_s"]["median"], 1e3 / v["per_s"]["median"], v["per_s"]["min"],
             v["per_s"]["max"]] for k, v in res.items()]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        updates, max_s, warmup = (10, 5.0, 2) if args.quick else (100, 30.0, 5)
        res, rat = learner_part(spec, device, updates, max_s, warmup, repeats)
        results[f"learner/{device.type}"], ratios[f"learner/{device.type}"] = res, rat
        rows += [[f"learner ({device.type})", k, v["updates_per_s"]["median"], 1e3 / v["updates_per_s"]["median"],
                  v["updates_per_s"]["min"], v["updates_per_s"]["max"]] for k, v in res.items()]
    print_table(f"OGPO actor actions/s and learner updates/s (median of {repeats}; one torch thread)",
                ["part", "variant", "per s", "ms each", "min", "max"], rows)
    for part, rat in ratios.items():
        for k, v in rat.items():
            print(f"{part}: {k} = {v:.3g}")
    save("bench_ogpo", args,
         params={"env": ENV.id, "obs": {k: list(s.shape) for k, s in spec.obs.items()}, "batch": BATCH,
                 "paper": {"flow": dataclasses.asdict(PAPER[0]), "ogpo": dataclasses.asdict(PAPER[1])},
                 "evidence": {"flow": dataclasses.asdict(EVIDENCE[0]), "ogpo": dataclasses.asdict(EVIDENCE[1])},
                 "actor_steps_per_repeat": steps, "torch_threads": 1, "repeats": repeats,
                 "devices": [d.type for d in devices]},
         results=results, ratios=ratios,
         notes=["no GPU was lent to this task" if not torch.cuda.is_available() else "cuda measured",
                "learner: synthetic state batches in memory (no Reverb); success-BC batch of 256 chunks every update"])


if __name__ == "__main__":
    main()
