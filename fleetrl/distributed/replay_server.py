"""The Reverb server, owned by a Ray actor, checkpointed into the run directory."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import ray

from fleetrl.config import ReplayConfig
from fleetrl.types import TransitionSpec


@ray.remote(num_cpus=0, max_concurrency=4)
class ReplayServer:
    """Runs a ``reverb.Server`` with table ``online``; restores the newest checkpoint in ``checkpoint_dir``.

    Threaded (Reverb's client is thread-safe), so ``stats`` answers while a long ``checkpoint`` runs."""

    def __init__(self, spec: TransitionSpec, cfg: ReplayConfig, batch_size: int, checkpoint_dir: str):
        import reverb

        from fleetrl.distributed.replay import ONLINE_TABLE, inserts_completed, online_table

        pathlib.Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        self._table = ONLINE_TABLE
        self._inserts_completed = inserts_completed
        self._server = reverb.Server(tables=[online_table(spec, cfg, batch_size)], port=cfg.port or None,
                                     checkpointer=reverb.checkpointers.DefaultCheckpointer(path=checkpoint_dir))
        self._client = reverb.Client(f"localhost:{self._server.port}")
        info = self._client.server_info()[ONLINE_TABLE]
        self._restored_size = int(info.current_size)
        self._inserts_at_start = inserts_completed(self._client)

    def address(self) -> str:
        """``host:port`` reachable from other nodes of the Ray cluster."""
        return f"{ray.util.get_node_ip_address()}:{self._server.port}"

    def pid(self) -> int:
        return os.getpid()

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
