"""Cal-QL learner updates/s, state and image observations, fed from Reverb vs the synthetic-batch ceiling.

The learner is :class:`fleetrl.learners.calql.CalQL` with the paper's settings (``CQLConfig()``: 2 critics 256x256,
10 sampled actions per state, batch 256, max-target backup, importance sampling), on the WidowX lift task's
observation spec: ``state`` (proprio, joints, object poses) and, for ``image``, a 128x128 third-person camera
through the default encoder (GroupNorm ResNet 32-64-128-256 with a learned spatial embedding, random shift).

- ``ceiling``: ``update`` on synthetic batches already in memory (the algorithm's own speed; nothing else runs).
- ``reverb-fed``: the learner's real path: a ``MixedBatchSource`` samples half of every batch from table ``offline``
  and half from ``online`` of an in-process ``reverb.Server`` (tf.data, one TF thread), converts to torch, and the
  learner updates on it.

The ratio reverb-fed / ceiling shows what feeding costs. A third comparison runs the same update, on the same
config and synthetic state batches, through ``baseline_calql.BaselineCalQL``, which is structured like the public
PyTorch Cal-QL (two separate critics, a torch.distributions actor, per-update ``.item()`` reads; see that module).
CUDA is measured when ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import reverb
import torch
from _common import interleaved, parse_args, print_table, save, summary

from fleetrl.config import CQLConfig, config_from_dict
from fleetrl.distributed.offline import offline_table
from fleetrl.distributed.replay import (
    ONLINE_TABLE,
    EpisodeWriter,
    item_signature,
    limit_tf_threads,
    make_batch_source,
)
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.learners.calql import CalQL
from fleetrl.types import ArraySpec, TransitionBatch, TransitionSpec

BATCH = 256
EPISODE = 80


def fill(client: reverb.Client, spec: TransitionSpec, table: str, items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def obs() -> dict[str, np.ndarray]:
        return {k: (rng.integers(0, 256, s.shape, dtype=np.uint8) if s.dtype == np.uint8
                    else rng.standard_normal(s.shape).astype(s.dtype)) for k, s in spec.obs.items()}

    writer = EpisodeWriter(client, spec, table=table)
    for e in range(-(-items // EPISODE)):
        rows = [spec.make_step(obs(), rng.uniform(-1, 1, spec.action.shape), reward=float(t == EPISODE - 1),
                               terminated=t == EPISODE - 1, truncated=False, mc_return=float(rng.normal()),
                               is_intervention=False, policy_version=0, actor_id=0, episode_id=e)
                for t in range(EPISODE)]
        writer.write_episode(rows, spec.padding_step(obs(), 0, e))
    writer.close()


def synthetic(spec: TransitionSpec, device: torch.device, seed: int) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict[str, torch.Tensor]:
        return {k: (torch.randint(0, 256, (BATCH, *s.shape), generator=g, dtype=torch.uint8) if s.dtype == np.uint8
                    else torch.randn((BATCH, *s.shape), generator=g)) for k, s in spec.obs.items()}

    term = torch.rand(BATCH, generator=g) < 0.02
    batch = TransitionBatch(obs=obs(), action=torch.rand((BATCH, *spec.action.shape), generator=g) * 2 - 1,
                            reward=term.float(), discount=(~term).float(), terminated=term,
                            truncated=torch.zeros(BATCH, dtype=torch.bool), next_obs=obs(),
                            mc_return=torch.randn(BATCH, generator=g), is_intervention=torch.zeros(BATCH, dtype=bool),
                            policy_version=torch.zeros(BATCH, dtype=torch.int64),
                            actor_id=torch.zeros(BATCH, dtype=torch.int32), episode_id=torch.zeros(BATCH).long())
    return batch.to(lambda t: t.to(device))


def measure(name: str, spec: TransitionSpec, device: torch.device, updates: int, max_s: float, warmup: int,
            repeats: int, fill_items: int) -> tuple[dict[str, Any], float]:
    cfg = config_from_dict({"learner": {"batch_size": BATCH}, "replay": {"min_size": BATCH},
                            "offline": {"datasets": [{"path": "unused"}]}})
    # Both tables pre-filled and sampled without a ratio limiter: what is measured is the sampling path, not the
    # update-to-data ratio (the run's online limiter would block the fill after a few thousand inserts).
    online = reverb.Table(name=ONLINE_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                          max_size=1_000_000, rate_limiter=reverb.rate_limiters.MinSize(1),
                          signature=item_signature(spec))
    server = reverb.Server([online, offline_table(spec, 1_000_000)])
    address = f"localhost:{server.port}"
    client = reverb.Client(address)
    fill(client, spec, "offline", fill_items, 0)
    fill(client, spec, "online", fill_items, 1)
    algo = CalQL(spec, CQLConfig(), device, seed=0)
    memory = [synthetic(spec, device, i) for i in range(4)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ceiling() -> float:
        for i in range(warmup):
            algo.update(memory[i % len(memory)])
        sync()
        t0, n = time.perf_counter(), 0
        while n < updates and time.perf_counter() - t0 < max_s:
            algo.update(memory[n % len(memory)])
            n += 1
        sync()
        return n / (time.perf_counter() - t0)

    def fed() -> float:
        source = make_batch_source(address, spec, cfg, device)
        try:
            for _ in range(warmup):
                algo.update(source.next(timeout_s=60))
            sync()
            t0, n = time.perf_counter(), 0
            while n < updates and time.perf_counter() - t0 < max_s:
                batch = source.next(timeout_s=60)
                if batch is None:
                    raise RuntimeError("no batch from Reverb in 60 s")
                algo.update(batch)
                n += 1
            sync()
            return n / (time.perf_counter() - t0)
        finally:
            source.close()

    values = interleaved({"ceiling (synthetic batches)": ceiling, "reverb-fed (offline+online)": fed}, repeats)
    server.stop()
    med = {k: statistics.median(v) for k, v in values.items()}
    ratio = med["reverb-fed (offline+online)"] / med["ceiling (synthetic batches)"]
    return {k: {"updates_per_s": summary(v)} for k, v in values.items()}, ratio


def versus_baseline(spec: TransitionSpec, device: torch.device, updates: int, max_s: float, warmup: int,
                    repeats: int) -> tuple[dict[str, Any], float]:
    """fleetrl's CalQL vs :class:`baseline_calql.BaselineCalQL` (the public PyTorch structure), same config and
    synthetic state batches; the ratio is fleetrl / baseline."""
    from baseline_calql import BaselineCalQL

    flat = TransitionSpec(obs={"state": ArraySpec((sum(int(np.prod(s.shape)) for s in spec.obs.values()),),
                                                  np.dtype(np.float32))}, action=spec.action)
    memory = [synthetic(flat, device, i) for i in range(4)]
    ours = CalQL(flat, CQLConfig(), device, seed=0)
    base = BaselineCalQL(flat.obs["state"].shape[0], int(np.prod(spec.action.shape)), CQLConfig(), str(device))

    def rate(algo: Any) -> float:
        for i in range(warmup):
            algo.update(memory[i % 4])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, n = time.perf_counter(), 0
        while n < updates and time.perf_counter() - t0 < max_s:
            algo.update(memory[n % 4])
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    values = interleaved({"fleetrl CalQL": lambda: rate(ours), "baseline (public PyTorch structure)":
                          lambda: rate(base)}, repeats)
    med = {k: statistics.median(v) for k, v in values.items()}
    return ({k: {"updates_per_s": summary(v)} for k, v in values.items()},
            med["fleetrl CalQL"] / med["baseline (public PyTorch structure)"])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = args.repeats or 3
    limit_tf_threads(1)
    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    from fleetrl.config import EnvConfig

    specs = {"state": transition_spec(EnvConfig(id="fleetrl/WidowXLift-v0", max_episode_steps=None)),
             "image": transition_spec(EnvConfig(id="fleetrl/WidowXLift-v0", max_episode_steps=None,
                                                kwargs={"image": True, "image_size": 128}))}
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    rows: list[list[Any]] = []

    def record(key: str, res: dict[str, Any], ratio: float, ratio_name: str, ratio_row: str) -> None:
        results[key] = res
        ratios[f"{key}: {ratio_name}"] = ratio
        for variant, r in res.items():
            u = r["updates_per_s"]
            rows.append([key, variant, u["median"], u["min"], u["max"], ratio if variant.startswith(ratio_row) else ""])

    for device in devices:
        for name, spec in specs.items():
            # The image learner on CPU takes tens of seconds per update: 2 timed updates, one repeat per variant.
            heavy = name == "image" and device.type == "cpu"
            updates, max_s, warmup = (2, 600.0, 1) if heavy else ((30, 3.0, 3) if args.quick else (200, 10.0, 10))
            res, ratio = measure(name, spec, device, updates, max_s, warmup, 1 if heavy else repeats,
                                 fill_items=2_000 if name == "image" else 20_000)
            record(f"{device.type}/{name}", res, ratio, "reverb-fed / ceiling", "reverb")
        updates, max_s, warmup = (30, 3.0, 3) if args.quick else (200, 10.0, 10)
        res, ratio = versus_baseline(specs["state"], device, updates, max_s, warmup, repeats)
        record(f"{device.type}/state vs baseline", res, ratio, "fleetrl / baseline", "fleetrl")
    print_table(f"Cal-QL updates/s, batch {BATCH}, CQLConfig() (median of {repeats})",
                ["device/obs", "variant", "updates/s", "min", "max", "ratio"], rows)
    save("bench_calql_learner", args,
         params={"batch": BATCH, "algo": "CalQL(CQLConfig()) paper defaults", "torch_threads": 1, "tf_threads": 1,
                 "repeats": repeats, "devices": [d.type for d in devices],
                 "specs": {k: {o: list(s.shape) for o, s in v.obs.items()} for k, v in specs.items()}},
         results=results, ratios=ratios,
         notes=["image on CPU: 1 warm-up + 2 timed updates, one repeat per variant (each takes tens of s)",
                "no GPU was lent to this task" if not torch.cuda.is_available() else "cuda measured"])


if __name__ == "__main__":
    main()
