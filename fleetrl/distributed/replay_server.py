"""The Reverb server, owned by a Ray actor, checkpointed into the run directory, restarted by Ray when it dies.

Each start of the server process is an *incarnation* (a fresh id). A restarted incarnation restores the newest
Reverb checkpoint, listens on a new port, and clients find it by asking the actor's handle for the address again
(:class:`fleetrl.distributed.replay_link.ReplayLink`). Beside the Reverb checkpoints a small JSON record keeps how
many items this launch had inserted when it was taken, so env-step counts continue across a restart, and what the
crash lost (inserted after the last checkpoint) can be counted.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import uuid
from typing import Any

import ray

from fleetrl.config import TrainConfig, batch_rows
from fleetrl.datasets.episode import DatasetError
from fleetrl.types import TransitionSpec


def record_path(checkpoint_dir: str | pathlib.Path) -> pathlib.Path:
    """The record written beside the Reverb checkpoint directory (atomically, after the checkpoint is complete).

    Not inside it: Reverb prunes that directory down to its newest entry by name, which a file there would be."""
    d = pathlib.Path(checkpoint_dir)
    return d.with_name(d.name + "_checkpoint.json")


def limiter_state(info: Any) -> str:
    """A table's rate-limiter state in words: filling, holding inserts back (the learner is behind), holding
    samples back (the learner waits for data). Reverb 0.14 reports only completed calls, so the state is derived
    from the limiter's balance ``inserts * samples_per_insert - samples`` against its bounds, counted since this
    server process started."""
    rl = info.rate_limiter_info
    if info.current_size < rl.min_size_to_sample:
        return f"filling ({int(info.current_size)}/{int(rl.min_size_to_sample)})"
    spi = float(rl.samples_per_insert)
    balance = int(rl.insert_stats.completed) * spi - int(rl.sample_stats.completed)
    if balance >= float(rl.max_diff) - spi:
        return "inserts blocked"
    if balance <= float(rl.min_diff) + 1.0:
        return "samples blocked"
    return "ok"


@ray.remote(num_cpus=0, max_concurrency=4)
class ReplayServer:
    """Runs a ``reverb.Server`` with table ``online`` (``offline`` when the run has offline datasets, ``demos`` when
    ``demos.ratio`` > 0); restores the newest checkpoint in ``checkpoint_dir``, then loads the offline datasets and
    the demos' seeds unless the restored tables hold them.

    ``launch_id`` names this start of the run (the driver's): inserts are counted from it, across incarnations.
    Threaded (Reverb's client is thread-safe), so ``stats`` answers while a long ``checkpoint`` runs."""

    def __init__(self, spec: TransitionSpec, cfg: TrainConfig, checkpoint_dir: str, launch_id: str = ""):
        import reverb

        from fleetrl.distributed.offline import OFFLINE_TABLE, load_offline, offline_table, table_size
        from fleetrl.distributed.replay import (
            DEMOS_TABLE,
            ONLINE_TABLE,
            SUCCESS_TABLE,
            inserts_completed,
            online_table,
        )
        from fleetrl.learners.builder import returns_fn

        self._dir = pathlib.Path(checkpoint_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.incarnation = uuid.uuid4().hex[:12]
        self._started_at = time.time()
        self._table = ONLINE_TABLE
        self._inserts_completed = inserts_completed
        has_offline, has_demos = bool(cfg.offline.datasets), cfg.demos.ratio > 0
        has_success, h = cfg.learner.success_table(), cfg.learner.horizon()
        self._tables = [ONLINE_TABLE, *([OFFLINE_TABLE] if has_offline else []), *([DEMOS_TABLE] if has_demos else []),
                        *([SUCCESS_TABLE] if has_success else [])]
        # The ratio limiter counts online samples only: each update draws the online share of a batch from it.
        tables = [online_table(spec, cfg.replay, batch_rows(cfg)["online"], h)]
        if has_offline:
            tables.append(offline_table(spec, cfg.offline.capacity, horizon=h))
        if has_demos:
            tables.append(offline_table(spec, cfg.demos.capacity, name=DEMOS_TABLE, horizon=h))
        if has_success:
            tables.append(offline_table(spec, cfg.learner.ogpo.success_capacity, name=SUCCESS_TABLE, horizon=h))
        record = self._read_record()
        self._server = reverb.Server(tables=tables, port=cfg.replay.port or None,
                                     checkpointer=reverb.checkpointers.DefaultCheckpointer(path=str(self._dir)))
        self._client = reverb.Client(f"localhost:{self._server.port}")
        info = self._client.server_info()[ONLINE_TABLE]
        self._restored_size = int(info.current_size)
        self._inserts_at_start = inserts_completed(self._client)
        # Inserts of this launch already in the restored checkpoint (0 for a fresh launch or a --resume, whose
        # counters come from the learner's checkpoint instead).
        same_launch = record is not None and record.get("launch_id") == launch_id and launch_id
        self._launch_id = launch_id
        self._inserts_base = int(record["inserts"]) if same_launch else 0
        self.restored_from = record if same_launch else None
        self._last_checkpoint = record
        self.offline: dict[str, Any] | None = None
        self.demos: dict[str, Any] | None = None
        self._load_error: Exception | None = None
        try:
            if has_offline:
                restored = table_size(self._client, OFFLINE_TABLE)
                self.offline = {"transitions": restored, "restored": True} if restored else load_offline(
                    self._client, spec, cfg.offline.datasets, cfg.offline.capacity, returns_fn(cfg.learner),
                    horizon=h)
            if has_demos:  # seeds, unless the restored table has them (and whatever people did since)
                restored = table_size(self._client, DEMOS_TABLE)
                seeded = bool(restored) or not cfg.demos.datasets
                self.demos = {"transitions": restored, "restored": bool(restored)} if seeded else load_offline(
                    self._client, spec, cfg.demos.datasets, cfg.demos.capacity, returns_fn(cfg.learner),
                    table=DEMOS_TABLE, horizon=h)
        except DatasetError as exc:  # raised to the driver by address(), as a DatasetError
            self._load_error = exc
        self._ready_at = time.time()

    def _read_record(self) -> dict[str, Any] | None:
        path = record_path(self._dir)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def address(self) -> str:
        """``host:port`` reachable from other nodes of the Ray cluster; raises the offline loader's error."""
        if self._load_error is not None:
            raise self._load_error
        return f"{ray.util.get_node_ip_address()}:{self._server.port}"

    def endpoint(self) -> dict[str, Any]:
        """Address, incarnation and what it was restored from (what a reconnecting client needs)."""
        return {"address": self.address(), "incarnation": self.incarnation, "restored_from": self.restored_from,
                "started_at": self._started_at, "ready_at": self._ready_at}

    def pid(self) -> int:
        return os.getpid()

    def offline_summary(self) -> dict[str, Any] | None:
        """What was loaded into ``offline`` (None without offline data)."""
        return self.offline

    def demos_summary(self) -> dict[str, Any] | None:
        """What seeded ``demos`` (None without a demos table)."""
        return self.demos

    def _inserts(self) -> int:
        """Items inserted into ``online`` in this launch, across incarnations, counting only what survived."""
        return self._inserts_base + self._inserts_completed(self._client) - self._inserts_at_start

    def stats(self) -> dict[str, Any]:
        infos = self._client.server_info()
        online = infos[self._table]
        tables = []
        for name in self._tables:
            info = infos[name]
            rl = info.rate_limiter_info
            tables.append({"name": name, "size": int(info.current_size), "max_size": int(info.max_size),
                           "inserts": int(rl.insert_stats.completed), "samples": int(rl.sample_stats.completed),
                           "rate_limiter": limiter_state(info)})
        return {
            "size": int(online.current_size),
            "restored_size": self._restored_size,
            "inserts": self._inserts(),
            "samples": int(online.rate_limiter_info.sample_stats.completed),
            "tables": tables,
            "incarnation": self.incarnation,
            "node": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "address": self.address() if self._load_error is None else None,
            "last_checkpoint": self._last_checkpoint,
        }

    def checkpoint(self) -> dict[str, Any]:
        """Write a Reverb checkpoint and its record; returns the path and this launch's inserts counted just
        before it (the items the checkpoint holds at least)."""
        inserts = self._inserts()
        path = self._client.checkpoint()
        record = {"path": path, "inserts": inserts, "launch_id": self._launch_id, "incarnation": self.incarnation,
                  "time": time.time()}
        final = record_path(self._dir)
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, final)
        self._last_checkpoint = record
        return record

    def stop(self) -> None:
        self._server.stop()
