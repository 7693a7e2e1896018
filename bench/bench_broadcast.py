"""Weight broadcast latency with real Ray: publish to the WeightStore -> every actor holds the new version.

``ray.init(num_cpus=4)`` on this machine, one :class:`WeightStore`, and N small Ray actors (N = 2, and 4 unless
``--quick``), each running a :class:`WeightSubscriber` with the GaussianPolicy (256, 256) template. For each of ~20
publishes of real policy weights (a GaussianPolicy's ``state_dict`` as numpy, ~270 kB), the latency is the time
from just before ``store.publish.remote(...)`` (the learner's fire-and-forget call) until the last actor sees the
new version in ``subscriber.current()`` (polled every 0.5 ms inside the actor, stamped with ``time.time()``; all
processes share one clock). Two actor conditions: ``idle`` (the actor only waits) and ``busy`` (the actor also
steps the env with the subscribed policy in a thread, as a sim actor does; not with ``--quick``).

Baseline, "load only at episode end": an actor that swaps weights only between episodes waits on average half an
episode; with full 200-step episodes of the default env that is ``100 / steps_per_s``, with ``steps_per_s`` of
EnvLoop + policy (no replay writing, so the baseline is if anything short) measured in this script before Ray starts.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
import torch
from _common import balancing_policy, interleaved, parse_args, percentile, print_table, save, summary, timed_rate

from fleetrl.actors.env_loop import EnvLoop
from fleetrl.config import EnvConfig
from fleetrl.distributed.weights import WeightStore, WeightSubscriber
from fleetrl.envs.gym_adapter import make_env
from fleetrl.learners.policy import GaussianPolicy
from fleetrl.types import TransitionSpec

HIDDEN = (256, 256)
POLL_S = 0.0005


class DiscardSink:
    def write_episode(self, rows: Any, padding_row: Any, should_stop: Callable[[], bool] = lambda: False) -> bool:
        return True


@ray.remote(num_cpus=1)
class Subscriber:
    """A stand-in actor: a WeightSubscriber, optionally an env loop stepping with the subscribed policy."""

    def __init__(self, store: Any, spec: TransitionSpec, busy: bool):
        torch.set_num_threads(1)
        self.sub = WeightSubscriber(store, GaussianPolicy(spec, HIDDEN), timeout_s=1.0)
        self._stop = threading.Event()
        self.steps = 0
        if busy:
            loop = EnvLoop(make_env(EnvConfig()), spec, self.sub.current, DiscardSink(), actor_id=0, gamma=0.99,
                           seed=0, random_steps=0)
            threading.Thread(target=self._run, args=(loop,), daemon=True).start()

    def _run(self, loop: EnvLoop) -> None:
        while not self._stop.is_set():
            if self.sub.current()[1] is None:
                time.sleep(0.01)
                continue
            loop.run_episode(self._stop.is_set)
            self.steps = loop.total_steps

    def wait_for(self, version: int, timeout_s: float) -> float | None:
        """``time.time()`` when ``version`` (or newer) is loaded, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.sub.current()[0] < version:
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)
        return time.time()

    def info(self) -> dict[str, Any]:
        return {"version": self.sub.current()[0], "last_latency_s": self.sub.last_latency_s, "steps": self.steps}

    def stop(self) -> None:
        self._stop.set()
        self.sub.close()


def measure_steps_per_s(spec: TransitionSpec, steps: int, repeats: int) -> list[float]:
    """EnvLoop + balancing policy (200-step episodes), one torch thread, no replay: steps/s per repeat."""
    torch.set_num_threads(1)
    policy = balancing_policy(spec, HIDDEN)
    loop = EnvLoop(make_env(EnvConfig()), spec, lambda: (0, policy), DiscardSink(), actor_id=0, gamma=0.99, seed=0,
                   random_steps=0)

    def run() -> int:
        start = loop.total_steps
        while loop.total_steps - start < steps:
            loop.run_episode()
        return loop.total_steps - start

    run()  # warm-up
    return interleaved({"loop": lambda: timed_rate(run)}, repeats)["loop"]


def broadcast(store: Any, actors: list[Any], weights: dict[str, Any], first_version: int, publishes: int,
              warmup: int) -> tuple[list[float], list[float], int]:
    """Latencies (s) until the last / the mean actor holds each new version; returns the next free version."""
    last, mean = [], []
    version = first_version
    for i in range(warmup + publishes):
        refs = [a.wait_for.remote(version, 30.0) for a in actors]
        time.sleep(0.03 + 0.02 * random.random())  # let every wait_for start polling; desynchronise from polls
        t0 = time.time()
        store.publish.remote(version, weights)
        got = ray.get(refs)
        if any(t is None for t in got):
            raise RuntimeError(f"version {version} did not reach every actor in 30 s: {got}")
        if i >= warmup:
            last.append(max(got) - t0)
            mean.append(statistics.fmean(got) - t0)
        version += 1
    return last, mean, version


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeats = args.repeats or 3
    publishes = 10 if quick else 20
    fleet_sizes = (2,) if quick else (2, 4)
    conditions = ("idle",) if quick else ("idle", "busy")
    random.seed(0)

    env = make_env(EnvConfig())
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    max_steps = EnvConfig().max_episode_steps
    env.close()
    sps_values = measure_steps_per_s(spec, 600 if quick else 2000, repeats)
    sps = statistics.median(sps_values)
    baseline_s = 0.5 * max_steps / sps
    weights = {k: v.numpy().copy() for k, v in balancing_policy(spec, HIDDEN).actor.state_dict().items()}
    weight_bytes = sum(w.nbytes for w in weights.values())

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    rows = []
    try:
        store = WeightStore.remote()
        version = 0
        for n in fleet_sizes:
            for cond in conditions:
                actors = [Subscriber.remote(store, spec, cond == "busy") for _ in range(n)]
                # The newest version reaches new subscribers at start; wait for it so timing starts clean.
                ray.get([a.wait_for.remote(version - 1, 120.0) for a in actors])
                last, mean, version = broadcast(store, actors, weights, version, publishes, warmup=3)
                infos = ray.get([a.info.remote() for a in actors])
                ray.get([a.stop.remote() for a in actors])
                for a in actors:
                    ray.kill(a)
                key = f"N={n}, {cond}"
                med, p95 = statistics.median(last), percentile(last, 95)
                results[key] = {"latency_all_actors_s": {**summary(last), "p95": p95},
                                "latency_mean_actor_s": summary(mean),
                                "subscriber_last_latency_s": [i["last_latency_s"] for i in infos],
                                "actor_env_steps": [i["steps"] for i in infos]}
                ratios[f"{key}: baseline / median latency"] = baseline_s / med
                rows.append([n, cond, 1e3 * med, 1e3 * p95, 1e3 * max(last), 1e3 * statistics.median(mean),
                             baseline_s / med])
    finally:
        ray.shutdown()

    print(f"\nbaseline: EnvLoop + policy {sps:,.0f} steps/s (median of {repeats}) -> half a {max_steps}-step episode "
          f"= {1e3 * baseline_s:.1f} ms expected wait when weights load only at episode end")
    print_table(f"Broadcast latency, publish -> all actors hold the version ({publishes} publishes; ms)",
                ["actors", "actors are", "median", "p95", "max", "mean actor", "baseline / median"], rows)
    save("bench_broadcast", args,
         params={"fleet_sizes": list(fleet_sizes), "conditions": list(conditions), "publishes": publishes,
                 "warmup_publishes": 3, "weight_bytes": weight_bytes, "policy_hidden": list(HIDDEN),
                 "poll_s": POLL_S, "ray_init": "num_cpus=4, include_dashboard=False",
                 "subscriber_timeout_s": 1.0},
         results={"baseline": {"env_loop_steps_per_s": summary(sps_values), "episode_steps": max_steps,
                               "expected_wait_s": baseline_s},
                  "broadcast": results},
         ratios=ratios,
         notes=["latency = time.time() in the actor when it sees the version - time.time() before publish.remote",
                "baseline = 0.5 * 200 steps / measured EnvLoop+policy steps/s (load weights only at episode end)"])


if __name__ == "__main__":
    main()
