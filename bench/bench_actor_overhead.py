"""Actor overhead: env steps/s of the bare env, of fleetrl's EnvLoop + policy, and of that loop writing to Reverb.

Three variants on the default env (``EnvConfig()`` = InvertedPendulum-v5, 200-step limit), in one process, one torch
thread, interleaved repeat by repeat:

- ``bare env``: ``env.step`` in a plain loop (no policy, no row building), the floor of what an actor can do;
- ``loop, no replay``: :class:`EnvLoop` with the GaussianPolicy (256, 256), ``random_steps=0``, whose sink discards
  finished episodes;
- ``loop + replay``: the same loop writing every episode through :class:`EpisodeWriter` into an in-process
  ``reverb.Server`` with the ``online_table`` (a rate limiter that never blocks the writer here).

Two episode-length regimes, because the per-episode work (reset, the writer's flush round trip) is amortised over
the episode: ``untrained`` (a freshly initialised policy and random bare actions; the pendulum falls after ~6
steps) and ``full episodes`` (the same-size policy with weights set to balance, 200-step episodes, as a trained
policy runs; the bare env gets the same controller computed in numpy).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import reverb
import torch
from _common import BALANCE_GAINS, balancing_policy, interleaved, parse_args, print_table, save, summary, timed_rate

from fleetrl.actors.env_loop import EnvLoop
from fleetrl.config import EnvConfig, ReplayConfig
from fleetrl.distributed.replay import EpisodeWriter, inserts_completed, online_table
from fleetrl.envs.gym_adapter import make_env
from fleetrl.learners.policy import GaussianPolicy
from fleetrl.types import TransitionSpec


class DiscardSink:
    """Episode sink that drops every episode (the loop without replay)."""

    def write_episode(self, rows: Any, padding_row: Any, should_stop: Callable[[], bool] = lambda: False,
                      success: bool = False) -> bool:
        return True


class BareEnv:
    """``env.step`` in a plain loop; ``act(env, obs)`` gives the action (random, or a controller in numpy)."""

    def __init__(self, act: Callable[[Any, dict[str, np.ndarray]], np.ndarray], seed: int):
        self.env = make_env(EnvConfig())
        self.env.action_space.seed(seed)
        self.act = act
        self.obs, _ = self.env.reset(seed=seed)
        self.episodes = 0
        self.steps = 0

    def run(self, n: int) -> int:
        env, obs = self.env, self.obs
        for _ in range(n):
            obs, _, terminated, truncated, _ = env.step(self.act(env, obs))
            if terminated or truncated:
                obs, _ = env.reset()
                self.episodes += 1
        self.obs = obs
        self.steps += n
        return n


def run_loop(loop: EnvLoop, n: int) -> int:
    """Whole episodes until at least ``n`` steps; returns the steps taken."""
    start = loop.total_steps
    while loop.total_steps - start < n:
        loop.run_episode()
    return loop.total_steps - start


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    steps = 1500 if args.quick else 6000
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(1)

    cfg = EnvConfig()
    probe = make_env(cfg)
    spec = TransitionSpec.from_spaces(probe.observation_space, probe.action_space)
    probe.close()

    # A table that never blocks the writer: min_size 1, and a sample-to-insert ratio so small that the insert side
    # of the limiter is never reached in this run (nothing samples).
    replay_cfg = ReplayConfig(capacity=2_000_000, min_size=1, updates_per_step=1e-6)
    server = reverb.Server(tables=[online_table(spec, replay_cfg, batch_size=1)])
    client = reverb.Client(f"localhost:{server.port}")
    writer = EpisodeWriter(client, spec)

    gains = np.asarray(BALANCE_GAINS, np.float32)
    policies = {"untrained": GaussianPolicy(spec, (256, 256), seed=0), "full episodes": balancing_policy(spec)}
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    rows = []
    for regime, policy in policies.items():
        if regime == "untrained":
            bare = BareEnv(lambda env, obs: env.action_space.sample(), seed=1)
        else:
            bare = BareEnv(lambda env, obs: np.tanh(np.array([gains @ obs["state"]], np.float32)), seed=1)

        def provider(p: GaussianPolicy = policy) -> tuple[int, GaussianPolicy]:
            return 0, p

        loop_plain = EnvLoop(make_env(cfg), spec, provider, DiscardSink(), actor_id=0, gamma=0.99, seed=2,
                             random_steps=0)
        loop_replay = EnvLoop(make_env(cfg), spec, provider, writer, actor_id=1, gamma=0.99, seed=2,
                              random_steps=0)
        variants = {
            "bare env": lambda b=bare: timed_rate(lambda: b.run(steps)),
            "loop, no replay": lambda lp=loop_plain: timed_rate(lambda: run_loop(lp, steps)),
            "loop + replay": lambda lr=loop_replay: timed_rate(lambda: run_loop(lr, steps)),
        }
        # Warm-up: import-time and first-call costs, the writer's connection, the table's first inserts.
        for lp in (loop_plain, loop_replay):
            run_loop(lp, min(steps, 1000))
        bare.run(min(steps, 1000))
        writer.flush()
        inserted_before = inserts_completed(client)
        steps_before = loop_replay.total_steps

        values = interleaved(variants, repeats)
        writer.flush()  # the writer pipelines up to 2 x MAX_PENDING_ITEMS items; count them all
        inserted = inserts_completed(client) - inserted_before
        if inserted != loop_replay.total_steps - steps_before:
            raise RuntimeError(f"replay holds {inserted} new items, the loop took "
                               f"{loop_replay.total_steps - steps_before} steps")
        med = {k: statistics.median(v) for k, v in values.items()}
        ep_len = {
            "bare env": bare.steps / max(bare.episodes, 1),
            "loop, no replay": loop_plain.total_steps / max(loop_plain.episodes, 1),
            "loop + replay": loop_replay.total_steps / max(loop_replay.episodes, 1),
        }
        results[regime] = {k: {"steps_per_s": summary(v), "mean_episode_length": ep_len[k]}
                           for k, v in values.items()}
        ratios[regime] = {
            "loop_no_replay / bare_env": med["loop, no replay"] / med["bare env"],
            "loop_replay / loop_no_replay": med["loop + replay"] / med["loop, no replay"],
            "loop_replay / bare_env": med["loop + replay"] / med["bare env"],
            "replay_cost_us_per_step": 1e6 * (1 / med["loop + replay"] - 1 / med["loop, no replay"]),
            "policy_and_loop_cost_us_per_step": 1e6 * (1 / med["loop, no replay"] - 1 / med["bare env"]),
        }
        for k in variants:
            base = med["loop, no replay"] if k == "loop + replay" else med["bare env"]
            rows.append([regime, k, med[k], min(values[k]), max(values[k]), ep_len[k], med[k] / base])

    writer.close()
    server.stop()
    print_table(f"Actor steps/s (median of {repeats}, {steps} steps each; ratio: replay vs no replay, else vs bare)",
                ["regime", "variant", "steps/s", "min", "max", "ep len", "ratio"], rows)
    for regime, r in ratios.items():
        print(f"{regime}: replay writing costs {r['replay_cost_us_per_step']:.0f} us/step, "
              f"policy + loop {r['policy_and_loop_cost_us_per_step']:.0f} us/step")
    save("bench_actor_overhead", args,
         params={"env": cfg.id, "max_episode_steps": cfg.max_episode_steps, "steps_per_repeat": steps,
                 "repeats": repeats, "torch_threads": 1, "policy_hidden": [256, 256], "random_steps": 0,
                 "replay": "in-process reverb.Server, online_table(min_size=1, updates_per_step=1e-6)"},
         results=results, ratios=ratios,
         notes=["untrained: random-init policy / random bare actions, ~6-step episodes",
                "full episodes: same-size policy set to balance (200-step episodes); bare env uses the same "
                "linear controller in numpy"])


if __name__ == "__main__":
    main()
