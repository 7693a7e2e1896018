"""Weight broadcast latency with real Ray: publish to the WeightStore -> every actor holds the new version.

``ray.init(num_cpus=4)`` on this machine, one :class:`WeightStore` per policy size, and N small Ray actors, each
running a :class:`WeightSubscriber` with a GaussianPolicy template of the size being published. For each of ~20
publishes of real policy weights (a GaussianPolicy's ``state_dict`` as numpy), the latency is the time from just
before ``store.publish.remote(...)`` (the learner's fire-and-forget call) until the last actor sees the new version
in ``subscriber.current()`` (polled every 0.5 ms inside the actor, stamped with ``time.time()``; all processes share
one clock). Two actor conditions: ``idle`` (the actor only waits) and ``busy`` (the actor also steps the env with the
subscribed policy in a thread, as a sim actor does, flat out; not with ``--quick``).

The sweep: N = 1, 2, 4, 8 actors (``--quick``: 1, 2) and three policy sizes (``--quick``: the first two),
GaussianPolicy hidden layers (256, 256) = 0.27 MB (the default policy), (1024, 1024) = 4.2 MB and (2048, 2048, 2048)
= 33.6 MB of float32 weights. The actors are created once (``num_cpus=0.25`` each, so 8 fit in the 4 logical CPUs);
for each (size, N) the first N hold a subscriber of that size and the others none. The machine has 2 cores, so
beyond 2 actors (and with the store, the driver and Ray's own processes) they share cores.

Baseline, "load only at episode end": an actor that swaps weights only between episodes waits on average half an
episode; with full 200-step episodes of the default env that is ``100 / steps_per_s``, with ``steps_per_s`` of
EnvLoop + a policy of the same size (no replay writing, so the baseline is if anything short) measured in this
script before Ray starts.
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

#: label -> GaussianPolicy hidden layers; (256, 256) is the default policy.
SIZES: dict[str, tuple[int, ...]] = {"0.27MB": (256, 256), "4MB": (1024, 1024), "34MB": (2048, 2048, 2048)}
POLL_S = 0.0005
ACTOR_CPUS = 0.25


class DiscardSink:
    def write_episode(self, rows: Any, padding_row: Any, should_stop: Callable[[], bool] = lambda: False,
                      success: bool = False) -> bool:
        return True


@ray.remote(num_cpus=ACTOR_CPUS)
class Subscriber:
    """A stand-in actor: a WeightSubscriber of a given policy size, optionally an env loop stepping with it."""

    def __init__(self, spec: TransitionSpec):
        torch.set_num_threads(1)
        self.spec = spec
        self.sub: WeightSubscriber | None = None
        self.tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0

    def subscribe(self, store: Any, tag: str | None, hidden: tuple[int, ...] = ()) -> None:
        """Subscribe to ``store`` with a GaussianPolicy(hidden) template (None: no subscriber); stops stepping."""
        self.set_busy(False)
        if tag == self.tag:
            return
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        if tag is not None:
            self.sub = WeightSubscriber(store, GaussianPolicy(self.spec, hidden), timeout_s=1.0)
        self.tag = tag

    def set_busy(self, busy: bool) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.steps = 0
        if busy:
            self._stop = threading.Event()
            loop = EnvLoop(make_env(EnvConfig()), self.spec, lambda: self.sub.current(), DiscardSink(), actor_id=0,
                           gamma=0.99, seed=0, random_steps=0)
            self._thread = threading.Thread(target=self._run, args=(loop, self._stop), daemon=True)
            self._thread.start()

    def _run(self, loop: EnvLoop, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.sub.current()[1] is None:
                time.sleep(0.01)
                continue
            loop.run_episode(stop.is_set)
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
        self.subscribe(None, None)


def measure_steps_per_s(spec: TransitionSpec, hidden: tuple[int, ...], steps: int, repeats: int) -> list[float]:
    """EnvLoop + balancing policy (200-step episodes), one torch thread, no replay: steps/s per repeat."""
    torch.set_num_threads(1)
    policy = balancing_policy(spec, hidden)
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
    warmup = 3
    fleet_sizes = (1, 2) if quick else (1, 2, 4, 8)
    conditions = ("idle",) if quick else ("idle", "busy")
    sizes = dict(list(SIZES.items())[:2]) if quick else SIZES
    random.seed(0)

    env = make_env(EnvConfig())
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    max_steps = EnvConfig().max_episode_steps
    env.close()
    weights, weight_bytes, sps_values, baseline_s = {}, {}, {}, {}
    for label, hidden in sizes.items():
        policy = balancing_policy(spec, hidden)
        weights[label] = {k: v.numpy().copy() for k, v in policy.actor.state_dict().items()}
        weight_bytes[label] = sum(w.nbytes for w in weights[label].values())
        # A bigger policy acts slower, so its episodes (and the baseline wait) are longer.
        n_steps = {"0.27MB": 2000, "4MB": 1000, "34MB": 400}[label] // (3 if quick else 1)
        sps_values[label] = measure_steps_per_s(spec, hidden, n_steps, repeats)
        baseline_s[label] = 0.5 * max_steps / statistics.median(sps_values[label])

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    rows = []
    try:
        actors = [Subscriber.remote(spec) for _ in range(max(fleet_sizes))]
        for label, hidden in sizes.items():
            store = WeightStore.remote()
            version = 0
            for n in fleet_sizes:
                for cond in conditions:
                    ray.get([a.subscribe.remote(store, label if i < n else None, hidden)
                             for i, a in enumerate(actors)])
                    fleet = actors[:n]
                    # The newest version reaches new subscribers at start; wait for it so timing starts clean.
                    ray.get([a.wait_for.remote(version - 1, 120.0) for a in fleet])
                    ray.get([a.set_busy.remote(cond == "busy") for a in fleet])
                    last, mean, version = broadcast(store, fleet, weights[label], version, publishes, warmup)
                    infos = ray.get([a.info.remote() for a in fleet])
                    ray.get([a.set_busy.remote(False) for a in fleet])
                    key = f"{label}, N={n}, {cond}"
                    med, p95 = statistics.median(last), percentile(last, 95)
                    results[key] = {"weight_bytes": weight_bytes[label], "policy_hidden": list(hidden), "actors": n,
                                    "condition": cond, "latency_all_actors_s": {**summary(last), "p95": p95},
                                    "latency_mean_actor_s": summary(mean),
                                    "subscriber_last_latency_s": [i["last_latency_s"] for i in infos],
                                    "actor_env_steps": [i["steps"] for i in infos]}
                    ratios[f"{key}: baseline / median latency"] = baseline_s[label] / med
                    rows.append([weight_bytes[label] / 1e6, n, cond, 1e3 * med, 1e3 * p95, 1e3 * max(last),
                                 1e3 * statistics.median(mean), 1e3 * baseline_s[label], baseline_s[label] / med])
                    print(f"{key}: median {1e3 * med:.1f} ms, p95 {1e3 * p95:.1f} ms", flush=True)
            ray.get([a.subscribe.remote(None, None) for a in actors])
            ray.kill(store)
        ray.get([a.stop.remote() for a in actors])
        for a in actors:
            ray.kill(a)
    finally:
        ray.shutdown()

    for label in sizes:
        sps = statistics.median(sps_values[label])
        print(f"baseline {label} ({weight_bytes[label] / 1e6:.2f} MB, hidden {sizes[label]}): EnvLoop + policy "
              f"{sps:,.0f} steps/s (median of {repeats}) -> half a {max_steps}-step episode = "
              f"{1e3 * baseline_s[label]:.1f} ms expected wait when weights load only at episode end")
    print_table(f"Broadcast latency, publish -> all actors hold the version ({publishes} publishes; ms)",
                ["MB", "actors", "actors are", "median", "p95", "max", "mean actor", "baseline", "baseline / median"],
                rows)
    save("bench_broadcast", args,
         params={"fleet_sizes": list(fleet_sizes), "conditions": list(conditions), "publishes": publishes,
                 "warmup_publishes": warmup, "policy_sizes": {k: list(v) for k, v in sizes.items()},
                 "weight_bytes": weight_bytes, "poll_s": POLL_S, "actor_num_cpus": ACTOR_CPUS,
                 "ray_init": "num_cpus=4, include_dashboard=False", "subscriber_timeout_s": 1.0},
         results={"baseline": {label: {"env_loop_steps_per_s": summary(sps_values[label]), "episode_steps": max_steps,
                                       "expected_wait_s": baseline_s[label]} for label in sizes},
                  "broadcast": results},
         ratios=ratios,
         notes=["latency = time.time() in the actor when it sees the version - time.time() before publish.remote",
                "baseline = 0.5 * 200 steps / measured EnvLoop+policy steps/s of the same policy size "
                "(load weights only at episode end)",
                "payloads: GaussianPolicy(spec, hidden).actor.state_dict() as numpy float32 arrays",
                "busy actors step the env flat out (not rate-limited as in a training run)"])


if __name__ == "__main__":
    main()
