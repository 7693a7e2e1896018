"""The Reverb server, owned by a Ray actor, checkpointed into the run directory."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import ray

from fleetrl.config import TrainConfig, split_batch
from fleetrl.datasets.episode import DatasetError
from fleetrl.types import TransitionSpec


@ray.remote(num_cpus=0, max_concurrency=4)
class ReplayServer:
    """Runs a ``reverb.Server`` with table ``online`` (and ``offline`` when the run has offline datasets); restores
    the newest checkpoint in ``checkpoint_dir``, then loads the offline datasets unless the restored table holds them.

    Threaded (Reverb's client is thread-safe), so ``stats`` answers while a long ``checkpoint`` runs."""

    def __init__(self, spec: TransitionSpec, cfg: TrainConfig, checkpoint_dir: str):
        import reverb

        from fleetrl.distributed.offline import OFFLINE_TABLE, load_offline, offline_table, table_size
        from fleetrl.distributed.replay import ONLINE_TABLE, inserts_completed, online_table
        from fleetrl.learners.builder import returns_fn

        pathlib.Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        self._table = ONLINE_TABLE
        self._inserts_completed = inserts_completed
        has_offline = bool(cfg.offline.datasets)
        # The ratio limiter counts online samples only: each update draws the online share of a batch from it.
        online_rows = split_batch(cfg.learner.batch_size, cfg.offline.ratio)[1] if has_offline else \
            cfg.learner.batch_size
        tables = [online_table(spec, cfg.replay, online_rows)]
        if has_offline:
            tables.append(offline_table(spec, cfg.offline.capacity))
        self._server = reverb.Server(tables=tables, port=cfg.replay.port or None,
                                     checkpointer=reverb.checkpointers.DefaultCheckpointer(path=checkpoint_dir))
        self._client = reverb.Client(f"localhost:{self._server.port}")
        info = self._client.server_info()[ONLINE_TABLE]
        self._restored_size = int(info.current_size)
        self._inserts_at_start = inserts_completed(self._client)
        self.offline: dict[str, Any] | None = None
        self._load_error: Exception | None = None
        if has_offline:
            restored = table_size(self._client, OFFLINE_TABLE)
            if restored:
                self.offline = {"transitions": restored, "restored": True}
            else:
                try:
                    self.offline = load_offline(self._client, spec, cfg.offline.datasets, cfg.offline.capacity,
                                                returns_fn(cfg.learner))
                except DatasetError as exc:  # raised to the driver by address(), as a DatasetError
                    self._load_error = exc

    def address(self) -> str:
        """``host:port`` reachable from other nodes of the Ray cluster; raises the offline loader's error."""
        if self._load_error is not None:
            raise self._load_error
        return f"{ray.util.get_node_ip_address()}:{self._server.port}"

    def pid(self) -> int:
        return os.getpid()

    def offline_summary(self) -> dict[str, Any] | None:
        """What was loaded into ``offline`` (None without offline data)."""
        return self.offline

    def stats(self) -> dict[str, Any]:
        info = self._client.server_info()[self._table]
        rl = info.rate_limiter_info
        return {
            "size": int(info.current_size),
            "restored_size": self._restored_size,
            "inserts": int(rl.insert_stats.completed) - self._inserts_at_start,
            "samples": int(rl.sample_stats.completed),
        }

    def checkpoint(self) -> dict[str, Any]:
        """Write a Reverb checkpoint; returns its path and the inserts since start counted just before it."""
        inserts = self._inserts_completed(self._client) - self._inserts_at_start
        return {"path": self._client.checkpoint(), "inserts": inserts}

    def stop(self) -> None:
        self._server.stop()
