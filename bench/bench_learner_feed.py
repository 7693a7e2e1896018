"""Learner feed: SAC updates/s fed from Reverb through BatchSource vs from batches already in memory.

The learner is :class:`fleetrl.learners.sac.SAC` with the default :class:`SACConfig`, batch 256, on CPU, with torch
intra-op threads 1 and 2. ``reverb-fed`` pulls every batch from a :class:`BatchSource` (background sampling thread,
tf.data, conversion to torch) over an in-process ``reverb.Server`` whose table was filled first (rate limiter
``MinSize(1)``: sampling never waits for inserts); ``in-memory`` cycles through 8 batches of the same shapes and
dtypes (copies of real sampled batches) held in memory. TensorFlow is limited to one thread, as in
``LearnerWorker``. The ratio reverb-fed / in-memory shows whether feeding holds the learner back; ``wait`` is the
share of the reverb-fed time spent inside ``BatchSource.next``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import reverb
import torch
from _common import interleaved, parse_args, print_table, save, summary

from fleetrl.config import EnvConfig, SACConfig
from fleetrl.distributed.replay import ONLINE_TABLE, BatchSource, EpisodeWriter, item_signature, limit_tf_threads
from fleetrl.envs.gym_adapter import make_env
from fleetrl.learners.sac import SAC
from fleetrl.types import TransitionBatch, TransitionSpec

BATCH = 256
EPISODE_STEPS = 200


def fill(client: reverb.Client, spec: TransitionSpec, items: int) -> None:
    rng = np.random.default_rng(0)
    writer = EpisodeWriter(client, spec)
    for e in range(-(-items // EPISODE_STEPS)):
        rows = [spec.make_step({"state": rng.standard_normal(4).astype(np.float32)},
                               rng.uniform(-1, 1, 1).astype(np.float32), reward=float(rng.uniform()),
                               terminated=t == EPISODE_STEPS - 1 and e % 2 == 0,
                               truncated=t == EPISODE_STEPS - 1 and e % 2 == 1, mc_return=0.0,
                               is_intervention=False, policy_version=0, actor_id=0, episode_id=e)
                for t in range(EPISODE_STEPS)]
        writer.write_episode(rows, spec.padding_step({"state": np.zeros(4, np.float32)}, 0, e))
    writer.close()


def next_batch(source: BatchSource) -> TransitionBatch:
    batch = source.next(timeout_s=30.0)
    if batch is None:
        raise RuntimeError("BatchSource produced no batch in 30 s")
    return batch


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    updates, max_s = (60, 1.5) if quick else (300, 6.0)  # per repeat: this many updates, or stop after max_s
    warmup = 5 if quick else 20
    fill_items = 10_000 if quick else 50_000
    thread_counts = (1, 2)
    limit_tf_threads(1)

    env = make_env(EnvConfig())
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    env.close()
    server = reverb.Server(tables=[reverb.Table(
        name=ONLINE_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(), max_size=1_000_000,
        rate_limiter=reverb.rate_limiters.MinSize(1), signature=item_signature(spec))])
    address = f"localhost:{server.port}"
    client = reverb.Client(address)
    fill(client, spec, fill_items)

    # In-memory batches: copies of real sampled batches, so shapes and dtypes are exactly the fed ones.
    source = BatchSource(address, spec, BATCH)
    memory: list[TransitionBatch] = []
    while len(memory) < 8:
        memory.append(next_batch(source).to(lambda t: t.clone()))
    source.close()

    waits: dict[int, list[float]] = {t: [] for t in thread_counts}

    def in_memory(algo: SAC) -> float:
        for i in range(warmup):
            algo.update(memory[i % len(memory)])
        t0 = time.perf_counter()
        n = 0
        while n < updates and time.perf_counter() - t0 < max_s:
            algo.update(memory[n % len(memory)])
            n += 1
        return n / (time.perf_counter() - t0)

    def reverb_fed(algo: SAC, threads: int) -> float:
        src = BatchSource(address, spec, BATCH)
        try:
            for _ in range(warmup):
                algo.update(next_batch(src))
            waited = 0.0
            t0 = time.perf_counter()
            n = 0
            while n < updates and time.perf_counter() - t0 < max_s:
                tw = time.perf_counter()
                batch = next_batch(src)
                waited += time.perf_counter() - tw
                algo.update(batch)
                n += 1
            elapsed = time.perf_counter() - t0
        finally:
            src.close()
        waits[threads].append(waited / elapsed)
        return n / elapsed

    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        algo = SAC(spec, SACConfig(), "cpu", seed=0)
        values = interleaved({"in-memory batches": lambda a=algo: in_memory(a),
                              "reverb-fed (BatchSource)": lambda a=algo, t=threads: reverb_fed(a, t)}, repeats)
        med = {k: statistics.median(v) for k, v in values.items()}
        ratio = med["reverb-fed (BatchSource)"] / med["in-memory batches"]
        wait = statistics.median(waits[threads])
        results[f"threads={threads}"] = {k: {"updates_per_s": summary(v)} for k, v in values.items()}
        results[f"threads={threads}"]["reverb-fed (BatchSource)"]["wait_share_median"] = wait
        ratios[f"threads={threads}: reverb-fed / in-memory"] = ratio
        for k, v in values.items():
            rows.append([threads, k, med[k], min(v), max(v), med[k] * BATCH,
                         wait if k.startswith("reverb") else "", med[k] / med["in-memory batches"]])
    server.stop()
    print_table(f"SAC updates/s, batch {BATCH}, default SACConfig (median of {repeats})",
                ["torch threads", "feed", "updates/s", "min", "max", "transitions/s", "wait", "x in-memory"], rows)
    save("bench_learner_feed", args,
         params={"batch": BATCH, "sac": "SACConfig() defaults", "device": "cpu", "thread_counts": list(thread_counts),
                 "updates_per_repeat": updates, "max_s_per_repeat": max_s, "warmup_updates": warmup,
                 "repeats": repeats, "table_items": fill_items, "tf_threads": 1, "in_memory_batches": len(memory)},
         results=results, ratios=ratios,
         notes=["wait = share of the reverb-fed wall time spent blocked in BatchSource.next"])


if __name__ == "__main__":
    main()
