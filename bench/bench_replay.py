"""Replay throughput through fleetrl vs raw Reverb on the same data (state-only transitions of the default env).

Insert: :meth:`EpisodeWriter.write_episode` of 200-step episodes (schema rows in; packing into the storage layout
counted against fleetrl) vs the minimal raw equivalent: a ``TrajectoryWriter`` loop over the same steps already in
the storage layout, creating the same two-step items with the same flush policy (``MAX_PENDING_ITEMS``).

Sample: :class:`BatchSource` (tf.data dataset, conversion to a torch :class:`TransitionBatch`, background thread and
queue), consuming batches of 256, vs raw ``reverb.TrajectoryDataset.from_table_signature(...).batch(256)`` iterated
with ``as_numpy_iterator()`` with the same ``max_in_flight_samples_per_worker``. Two diagnostic variants split
fleetrl's path: ``make_dataset`` iterated as numpy, and that plus ``split_sample`` + torch conversion inline (no
thread). The table is filled first and its rate limiter is ``MinSize(1)``, so sampling never waits.

Everything runs in one process with an in-process ``reverb.Server`` (loopback gRPC), variants interleaved.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import reverb
import torch
from _common import interleaved, parse_args, print_table, save, summary, timed_rate

from fleetrl.config import EnvConfig
from fleetrl.distributed.replay import (
    MAX_PENDING_ITEMS,
    ONLINE_TABLE,
    BatchSource,
    EpisodeWriter,
    item_signature,
    make_dataset,
    pack_episode,
    split_sample,
)
from fleetrl.envs.gym_adapter import make_env
from fleetrl.types import TransitionSpec

EPISODE_STEPS = 200
BATCH = 256
RAW_TABLE = "raw"
SAMPLE_TABLE = "sample"


def table(name: str, spec: TransitionSpec, max_size: int) -> reverb.Table:
    """Same selectors and signature as ``online_table``, but a ``MinSize(1)`` limiter that never blocks."""
    return reverb.Table(name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                        max_size=max_size, rate_limiter=reverb.rate_limiters.MinSize(1),
                        signature=item_signature(spec))


def make_episodes(spec: TransitionSpec, n: int, seed: int = 0) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``n`` episodes of schema rows (random values of the right shapes) and their padding rows."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n):
        rows = [spec.make_step({"state": rng.standard_normal(4).astype(np.float32)},
                               rng.uniform(-1, 1, 1).astype(np.float32), reward=1.0, terminated=False,
                               truncated=t == EPISODE_STEPS - 1, mc_return=float(EPISODE_STEPS - t),
                               is_intervention=False, policy_version=7, actor_id=0, episode_id=e)
                for t in range(EPISODE_STEPS)]
        padding = spec.padding_step({"state": rng.standard_normal(4).astype(np.float32)}, 0, e)
        episodes.append((rows, padding))
    return episodes


def raw_write_episode(writer: reverb.TrajectoryWriter, steps: list[dict[str, Any]]) -> None:
    """The minimal raw Reverb equivalent of ``EpisodeWriter.write_episode``: same steps, same items, same flushes."""
    for i, step in enumerate(steps):
        writer.append(step)
        if i >= 1:
            hist = writer.history
            writer.create_item(RAW_TABLE, priority=1.0, trajectory={
                "obs": {"state": hist["obs"]["state"][-2:]}, "f32": hist["f32"][-2], "i64": hist["i64"][-2]})
        if i % MAX_PENDING_ITEMS == MAX_PENDING_ITEMS - 1:
            writer.flush(block_until_num_items=MAX_PENDING_ITEMS)
    writer.flush(block_until_num_items=MAX_PENDING_ITEMS)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    insert_episodes = 15 if quick else 50  # per repeat
    fill_items = 20_000 if quick else 50_000
    sample_batches = 60 if quick else 300  # per repeat
    warmup_batches = 10 if quick else 30
    in_flight = 2 * BATCH  # what fleetrl's make_dataset uses by default

    env = make_env(EnvConfig())
    spec = TransitionSpec.from_spaces(env.observation_space, env.action_space)
    env.close()
    episodes = make_episodes(spec, 8)
    packed = [pack_episode(spec, rows, padding) for rows, padding in episodes]
    insert_cap = (repeats + 2) * insert_episodes * EPISODE_STEPS
    server = reverb.Server(tables=[table(ONLINE_TABLE, spec, insert_cap), table(RAW_TABLE, spec, insert_cap),
                                   table(SAMPLE_TABLE, spec, 1_000_000)])
    address = f"localhost:{server.port}"
    client = reverb.Client(address)

    # ------------------------------------------------------------------------------------------------ insert
    fleet_writer = EpisodeWriter(client, spec, ONLINE_TABLE)
    raw_writer = client.trajectory_writer(num_keep_alive_refs=2)

    def insert_fleetrl(n: int = insert_episodes) -> int:
        for i in range(n):
            rows, padding = episodes[i % len(episodes)]
            fleet_writer.write_episode(rows, padding)
        return n * EPISODE_STEPS

    def insert_raw(n: int = insert_episodes) -> int:
        for i in range(n):
            raw_write_episode(raw_writer, packed[i % len(packed)])
        return n * EPISODE_STEPS

    insert_fleetrl(3)
    insert_raw(3)
    ins = interleaved({"raw TrajectoryWriter loop": lambda: timed_rate(insert_raw),
                       "fleetrl EpisodeWriter": lambda: timed_rate(insert_fleetrl)}, repeats)
    fleet_writer.flush()
    raw_writer.flush()
    info = client.server_info()
    sizes = {t: int(info[t].current_size) for t in (ONLINE_TABLE, RAW_TABLE)}
    if sizes[ONLINE_TABLE] != sizes[RAW_TABLE]:
        raise RuntimeError(f"the two insert paths stored different item counts: {sizes}")
    fleet_writer.close()
    raw_writer.close()

    # ------------------------------------------------------------------------------------------------ sample
    filler = EpisodeWriter(client, spec, SAMPLE_TABLE)
    t0 = time.perf_counter()
    for i in range(-(-fill_items // EPISODE_STEPS)):
        rows, padding = episodes[i % len(episodes)]
        filler.write_episode(rows, padding)
    fill_s = time.perf_counter() - t0
    filler.close()
    table_size = int(client.server_info()[SAMPLE_TABLE].current_size)

    def raw_dataset() -> float:
        ds = reverb.TrajectoryDataset.from_table_signature(
            server_address=address, table=SAMPLE_TABLE, max_in_flight_samples_per_worker=in_flight).batch(BATCH)
        it = ds.as_numpy_iterator()
        for _ in range(warmup_batches):
            next(it)
        t = time.perf_counter()
        for _ in range(sample_batches):
            next(it)
        return sample_batches * BATCH / (time.perf_counter() - t)

    def fleet_dataset(convert: bool) -> float:
        it = make_dataset(address, BATCH, SAMPLE_TABLE).as_numpy_iterator()
        for _ in range(warmup_batches):
            next(it)
        t = time.perf_counter()
        for _ in range(sample_batches):
            sample = next(it)
            if convert:
                split_sample(spec, sample.data).to(lambda x: torch.from_numpy(np.ascontiguousarray(x)))
        return sample_batches * BATCH / (time.perf_counter() - t)

    def batch_source() -> float:
        source = BatchSource(address, spec, BATCH, "cpu", table=SAMPLE_TABLE)
        try:
            for _ in range(warmup_batches):
                if source.next(timeout_s=30.0) is None:
                    raise RuntimeError("BatchSource produced no batch in 30 s")
            t = time.perf_counter()
            for _ in range(sample_batches):
                batch = source.next(timeout_s=30.0)
                if batch is None:
                    raise RuntimeError("BatchSource produced no batch in 30 s")
            rate = sample_batches * BATCH / (time.perf_counter() - t)
        finally:
            source.close()
        assert tuple(batch.obs["state"].shape) == (BATCH, 4) and tuple(batch.next_obs["state"].shape) == (BATCH, 4)
        return rate

    smp = interleaved({
        "raw TrajectoryDataset.batch": raw_dataset,
        "fleetrl BatchSource": batch_source,
        "diag: make_dataset, numpy": lambda: fleet_dataset(False),
        "diag: make_dataset + split_sample + torch, inline": lambda: fleet_dataset(True),
    }, repeats)
    server.stop()

    med_i = {k: statistics.median(v) for k, v in ins.items()}
    med_s = {k: statistics.median(v) for k, v in smp.items()}
    raw_i, raw_s = med_i["raw TrajectoryWriter loop"], med_s["raw TrajectoryDataset.batch"]
    rows = [["insert", k, med_i[k], min(v), max(v), med_i[k] / raw_i] for k, v in ins.items()]
    rows += [["sample", k, med_s[k], min(v), max(v), med_s[k] / raw_s] for k, v in smp.items()]
    print_table(f"Replay transitions/s (median of {repeats}; ratio vs raw Reverb)",
                ["op", "path", "transitions/s", "min", "max", "x raw"], rows)
    ratios = {"insert fleetrl/raw": med_i["fleetrl EpisodeWriter"] / raw_i,
              "sample fleetrl/raw": med_s["fleetrl BatchSource"] / raw_s,
              "sample make_dataset/raw": med_s["diag: make_dataset, numpy"] / raw_s,
              "sample make_dataset+convert/raw": med_s["diag: make_dataset + split_sample + torch, inline"] / raw_s}
    # Paired per repeat (the variants run back to back inside each repeat): steadier than a ratio of medians
    # when the machine's speed drifts between repeats.
    ratios["insert fleetrl/raw, median of paired"] = statistics.median(
        f / r for f, r in zip(ins["fleetrl EpisodeWriter"], ins["raw TrajectoryWriter loop"], strict=True))
    ratios["sample fleetrl/raw, median of paired"] = statistics.median(
        f / r for f, r in zip(smp["fleetrl BatchSource"], smp["raw TrajectoryDataset.batch"], strict=True))
    print(f"\ninsert fleetrl/raw = {ratios['insert fleetrl/raw']:.2f} (paired "
          f"{ratios['insert fleetrl/raw, median of paired']:.2f}), sample fleetrl/raw = "
          f"{ratios['sample fleetrl/raw']:.2f} (paired {ratios['sample fleetrl/raw, median of paired']:.2f}); "
          "goal >= 0.9")
    save("bench_replay", args,
         params={"episode_steps": EPISODE_STEPS, "insert_episodes_per_repeat": insert_episodes, "batch": BATCH,
                 "sample_batches_per_repeat": sample_batches, "warmup_batches": warmup_batches,
                 "max_in_flight_samples_per_worker": in_flight, "sample_table_size": table_size,
                 "fill_s": fill_s, "repeats": repeats, "obs": "state float32[4]", "action": "float32[1]"},
         results={"insert": {k: {"transitions_per_s": summary(v)} for k, v in ins.items()},
                  "sample": {k: {"transitions_per_s": summary(v)} for k, v in smp.items()}},
         ratios=ratios)


if __name__ == "__main__":
    main()
