"""The ``offline`` Reverb table: offline datasets loaded as transitions, sampled beside ``online`` data.

Items have the same signature as ``online`` (a two-step window over step rows, so the next observation is stored
once). The table never evicts (loading more than its capacity is refused) and has no ratio limiter: offline data
does not grow, so the update-to-data ratio is held on ``online`` alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import reverb

from fleetrl.config import DatasetConfig
from fleetrl.datasets.episode import DatasetError
from fleetrl.datasets.sources import episode_rows, episode_where, open_dataset
from fleetrl.distributed.replay import EpisodeWriter, item_signature
from fleetrl.types import TransitionSpec

log = logging.getLogger(__name__)
OFFLINE_TABLE = "offline"


def offline_table(spec: TransitionSpec, capacity: int, name: str = OFFLINE_TABLE, horizon: int = 1) -> reverb.Table:
    """Table ``offline`` (or ``demos``, ``success``): uniform sampling, sampleable once it holds one item, no ratio
    limiter; ``offline`` is never filled beyond its capacity, the others evict their oldest beyond it. Items are
    transitions, or chunks of ``horizon`` steps."""
    return reverb.Table(
        name=name, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
        max_size=capacity, rate_limiter=reverb.rate_limiters.MinSize(1), signature=item_signature(spec, horizon))


def table_size(client: reverb.Client, table: str = OFFLINE_TABLE) -> int:
    return int(client.server_info()[table].current_size)


class _StateStats:
    """Per-dimension mean and std of the state vector (the float obs keys in the learner's order) over the
    transitions loaded, for ``learner.normalize_obs``."""

    def __init__(self, spec: TransitionSpec) -> None:
        from fleetrl.learners.policy import policy_obs_keys

        self.keys = policy_obs_keys(spec)
        self.n, self.sum, self.sumsq = 0, 0.0, 0.0

    def add(self, episode: Any) -> None:
        x = np.concatenate([episode.observations[k][:-1].reshape(episode.length, -1) for k in self.keys], axis=1)
        x = x.astype(np.float64)
        self.n, self.sum, self.sumsq = self.n + len(x), self.sum + x.sum(0), self.sumsq + np.square(x).sum(0)

    def result(self) -> dict[str, list[float]] | None:
        if self.n == 0:
            return None
        mean = self.sum / self.n
        # A constant dimension keeps std 1 (nothing to scale); others are floored so tiny noise is not blown up.
        std = np.sqrt(np.maximum(self.sumsq / self.n - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, np.maximum(std, 1e-3))
        return {"mean": mean.astype(np.float32).tolist(), "std": std.astype(np.float32).tolist()}


def load_offline(client: reverb.Client, spec: TransitionSpec, datasets: Sequence[DatasetConfig], capacity: int,
                 returns_fn: Callable[[np.ndarray, bool], np.ndarray], table: str = OFFLINE_TABLE,
                 horizon: int = 1) -> dict[str, Any]:
    """Insert every episode of ``datasets`` into ``table`` (``offline``, or ``demos`` for its seeds); returns counts
    per dataset. Errors name the config section of the same name (``offline.datasets``, ``demos.capacity``).

    Each episode is checked against ``spec`` (keys, shapes, dtypes, finite values, actions in [-1, 1]) before any of
    its steps is written; a bad one raises :class:`DatasetError` naming the dataset, the episode and the key. More
    transitions than ``capacity`` raise too, before the episode that would overflow is written.
    """
    t0 = time.monotonic()
    writer = EpisodeWriter(client, spec, table=table, horizon=horizon)
    stats = _StateStats(spec)
    total = episodes = 0
    per_dataset = []
    try:
        for d, source in enumerate(datasets):
            n_eps = n_steps = n_success = 0
            for i, episode in enumerate(open_dataset(source.path, source.format, source.obs_keys, source.split,
                                                     source.max_episodes)):
                where = episode_where(table, d, source.path, i, episode)
                if total + episode.length > capacity:
                    raise DatasetError(f"{where}: the {table} datasets hold more than {table}.capacity ({capacity}) "
                                       f"transitions; raise {table}.capacity or load fewer episodes")
                rows, padding = episode_rows(spec, episode, where, -(episodes + 1), returns_fn)
                if table != OFFLINE_TABLE:  # demonstrations seeding `demos`: a person chose every action
                    for row in rows:
                        row["is_intervention"] = True
                writer.write_episode(rows, padding)
                stats.add(episode)
                n_eps, n_steps, n_success = n_eps + 1, n_steps + episode.length, n_success + episode.is_success
                episodes, total = episodes + 1, total + episode.length
            if n_eps == 0:
                raise DatasetError(f"{table}.datasets[{d}] {source.path}: holds no episodes")
            per_dataset.append({"path": source.path, "episodes": n_eps, "transitions": n_steps,
                                "success_rate": n_success / n_eps})
        writer.flush()
    finally:
        writer.close()
    summary = {"episodes": episodes, "transitions": total, "datasets": per_dataset, "obs_stats": stats.result(),
               "seconds": time.monotonic() - t0}
    log.info("offline table: loaded %d transitions from %d episodes in %.1f s", total, episodes, summary["seconds"])
    return summary
