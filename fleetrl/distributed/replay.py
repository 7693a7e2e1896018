"""Reverb replay: the table definition, the episode writer actors use, and the learner's batch source.

A transition is a Reverb item over a two-step window of appended step rows: it reads ``obs`` at both steps (the
second is the next observation) and every other field at the first. So the next observation is stored once, in the
following row; after an episode's last step a padding row carries the final observation.

Action chunks (``horizon`` H > 1, flow policies and OGPO's chunked TD): an item is an (H + 1)-step window, the
observation at its first and last step and every other field at its first H steps; H padding rows follow each
episode, all carrying the final observation (so that one is stored H times; every other step once).
:func:`split_sample` turns such a window into one chunk transition.

Storage layout: each observation key is a column; the action and the float scalars share one float32 column
(``f32``), the bool and integer scalars one int64 column (``i64``). The writer's cost is per column and per step
(about 35 us each here), so packing 9 scalar fields into 2 columns more than halves the actors' insert cost.
:func:`split_sample` unpacks by the names in :mod:`fleetrl.types`; the packing is derived from the schema.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import reverb
import tensorflow as tf
import torch

from fleetrl.config import ReplayConfig, TrainConfig, batch_rows
from fleetrl.types import SCALAR_FIELDS, ArraySpec, TransitionBatch, TransitionSpec

ONLINE_TABLE = "online"
DEMOS_TABLE = "demos"
SUCCESS_TABLE = "success"
#: The writer waits whenever more than this many items are unconfirmed, checking every this many items, so at most
#: twice as many are ever in flight (Reverb itself warns above about 50).
MAX_PENDING_ITEMS = 16

# Sampled arrays are read-only views into Reverb's buffers; the learner never writes into a batch.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _tensor_spec(spec: ArraySpec, window: int | None = None) -> tf.TensorSpec:
    shape = spec.shape if window is None else (window, *spec.shape)
    return tf.TensorSpec(shape, tf.as_dtype(spec.dtype))


#: Scalar fields stored in the float32 column after the flattened action, and in the int64 column, in order.
FLOAT_FIELDS: tuple[str, ...] = tuple(k for k, dt in SCALAR_FIELDS.items() if dt.kind == "f")
INT_FIELDS: tuple[str, ...] = tuple(k for k, dt in SCALAR_FIELDS.items() if dt.kind != "f")


assert all(SCALAR_FIELDS[k] == np.float32 for k in FLOAT_FIELDS), "packed float fields must be float32"
assert all(np.can_cast(SCALAR_FIELDS[k], np.int64) for k in INT_FIELDS), "packed int fields must fit int64"


def _action_size(spec: TransitionSpec) -> int:
    return int(np.prod(spec.action.shape, dtype=np.int64))


def item_signature(spec: TransitionSpec, horizon: int = 1) -> dict[str, Any]:
    """Reverb signature of one stored transition (``horizon`` 1) or action chunk, derived from the schema."""
    if horizon < 1:
        raise ValueError(f"horizon: must be >= 1, got {horizon}")
    chunk = () if horizon == 1 else (horizon,)
    return {"obs": {k: _tensor_spec(s, window=horizon + 1) for k, s in spec.obs.items()},
            "f32": tf.TensorSpec((*chunk, _action_size(spec) + len(FLOAT_FIELDS)), tf.float32),
            "i64": tf.TensorSpec((*chunk, len(INT_FIELDS)), tf.int64)}


def pack_episode(spec: TransitionSpec, rows: Sequence[Mapping[str, Any]],
                 padding_row: Mapping[str, Any], horizon: int = 1) -> list[dict[str, Any]]:
    """Schema rows, then ``horizon`` copies of the padding row, in the storage layout:
    ``{"obs": {...}, "f32": [...], "i64": [...]}``.

    With ``horizon`` > 1 the last row is marked ``truncated`` if it is neither terminated nor truncated (a dataset
    episode that simply stops): chunk windows find the episode's end by those flags."""
    every = [*rows, *([padding_row] * horizon)]
    a = _action_size(spec)
    f32 = np.empty((len(every), a + len(FLOAT_FIELDS)), np.float32)
    f32[:, :a] = np.stack([np.asarray(r["action"], np.float32).reshape(a) for r in every])
    f32[:, a:] = [[r[k] for k in FLOAT_FIELDS] for r in every]
    i64 = np.array([[r[k] for k in INT_FIELDS] for r in every], np.int64)
    if horizon > 1 and rows and not (rows[-1]["terminated"] or rows[-1]["truncated"]):
        i64[len(rows) - 1, INT_FIELDS.index("truncated")] = 1
    return [{"obs": r["obs"], "f32": f32[t], "i64": i64[t]} for t, r in enumerate(every)]


def rate_limiter(cfg: ReplayConfig, batch_size: int) -> reverb.rate_limiters.SampleToInsertRatio:
    """Holds ``cfg.updates_per_step`` learner updates per inserted env step.

    Each update samples ``batch_size`` items, so the sample-to-insert ratio is ``updates_per_step * batch_size``;
    the error buffer lets either side run ``rate_tolerance_steps`` env steps ahead before it blocks.
    """
    spi = cfg.updates_per_step * batch_size
    return reverb.rate_limiters.SampleToInsertRatio(
        samples_per_insert=spi, min_size_to_sample=cfg.min_size,
        error_buffer=max(cfg.rate_tolerance_steps * spi, 2.0 * max(1.0, spi)))


def online_table(spec: TransitionSpec, cfg: ReplayConfig, batch_size: int, horizon: int = 1) -> reverb.Table:
    """Table ``online``: uniform sampling, FIFO eviction, the UTD rate limiter; items are transitions, or action
    chunks of ``horizon`` steps."""
    return reverb.Table(
        name=ONLINE_TABLE, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
        max_size=cfg.capacity, rate_limiter=rate_limiter(cfg, batch_size), signature=item_signature(spec, horizon))


def inserts_completed(client: reverb.Client, table: str = ONLINE_TABLE) -> int:
    """Items inserted into ``table`` since its server started (restored items not counted)."""
    return int(client.server_info()[table].rate_limiter_info.insert_stats.completed)


class EpisodeWriter:
    """Writes finished episodes into Reverb through one ``TrajectoryWriter``.

    Items are created only once an episode is complete (its Monte-Carlo returns are known then), so an actor that
    dies mid-episode stores nothing of that episode. With ``demo_table``, every transition a person chose
    (``is_intervention``) gets a second item there over the same stored steps (no data is copied); with
    ``success_table``, every transition of a successful episode does (OGPO's success-buffer BC).
    """

    def __init__(self, client: reverb.Client, spec: TransitionSpec, table: str = ONLINE_TABLE,
                 flush_timeout_ms: int = 1000, server_gone: Callable[[], bool] | None = None,
                 demo_table: str | None = None, horizon: int = 1, success_table: str | None = None):
        self._writer = client.trajectory_writer(num_keep_alive_refs=horizon + 1)
        self._spec, self._table, self._demo_table = spec, table, demo_table
        self._horizon, self._success_table = horizon, success_table
        self._flush_timeout_ms = flush_timeout_ms
        # Asked after every flush that timed out: True means the server no longer answers (a dead server and a
        # blocking rate limiter look alike to the writer). The write is abandoned then and ``broken`` set.
        self._server_gone = server_gone
        self.broken = False
        self.items_created = 0
        self.demo_items_created = 0
        self.success_items_created = 0

    def write_episode(self, rows: Sequence[Mapping[str, Any]], padding_row: Mapping[str, Any],
                      should_stop: Callable[[], bool] = lambda: False, success: bool = False) -> bool:
        """Append ``rows`` plus the padding row and create one item per transition.

        Returns once at most ``MAX_PENDING_ITEMS`` items are unconfirmed (the rate limiter's back-pressure reaches the
        actor here, and the next episode's items pipeline behind this one's). Returns False if ``should_stop``
        became true while the rate limiter held items back: the rest of the episode is then not inserted. Every
        item that is inserted is a whole transition with its final ``mc_return``. ``success``: the episode
        succeeded; its items go to ``success_table`` too, if there is one.
        """
        if self.broken:
            return False
        writer, h = self._writer, self._horizon
        for i, step in enumerate(pack_episode(self._spec, rows, padding_row, h)):
            writer.append(step)
            if i >= h:  # the window of row i - h is complete; never a window across two episodes
                demo = self._demo_table is not None and any(bool(r["is_intervention"]) for r in rows[i - h:i])
                self._create_item(demo=demo, success=success and self._success_table is not None)
            # Bound the unconfirmed items: memory on both sides stays small while the limiter blocks inserts.
            if i % MAX_PENDING_ITEMS == MAX_PENDING_ITEMS - 1 and not self._flush(MAX_PENDING_ITEMS, should_stop):
                return False
        # Up to MAX_PENDING_ITEMS stay unconfirmed: waiting for all of them at every episode end cost ~10 % of the
        # insert rate (bench_replay.py). The price: an actor killed right after an episode may leave that finished
        # episode without its last transitions (each stored one is still whole).
        return self._flush(MAX_PENDING_ITEMS, should_stop)

    def flush(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until every created item is confirmed by the server (False if stopped first)."""
        return self._flush(0, should_stop)

    def _flush(self, block_until_num_items: int, should_stop: Callable[[], bool]) -> bool:
        if self.broken:
            return False
        while True:
            try:
                self._writer.flush(block_until_num_items=block_until_num_items, timeout_ms=self._flush_timeout_ms)
                return True
            except reverb.DeadlineExceededError:
                if self._server_gone is not None and self._server_gone():
                    self.broken = True
                    return False
                if should_stop():
                    return False

    def _create_item(self, demo: bool = False, success: bool = False) -> None:
        hist, h = self._writer.history, self._horizon
        if h == 1:
            trajectory = {"obs": {k: col[-2:] for k, col in hist["obs"].items()},
                          "f32": hist["f32"][-2], "i64": hist["i64"][-2]}
        else:
            trajectory = {"obs": {k: col[-(h + 1):] for k, col in hist["obs"].items()},
                          "f32": hist["f32"][-(h + 1):-1], "i64": hist["i64"][-(h + 1):-1]}
        self._writer.create_item(self._table, priority=1.0, trajectory=trajectory)
        self.items_created += 1
        if demo:
            self._writer.create_item(self._demo_table, priority=1.0, trajectory=trajectory)
            self.demo_items_created += 1
        if success:
            self._writer.create_item(self._success_table, priority=1.0, trajectory=trajectory)
            self.success_items_created += 1

    def close(self, timeout_ms: int = 2000) -> None:
        """Send what is pending (waiting at most ``timeout_ms``; not at all once ``broken``), then close."""
        try:
            if not self.broken:
                self._writer.flush(timeout_ms=timeout_ms)
        except Exception:  # noqa: BLE001 - a blocked or gone server: what is unsent is dropped, not half-written
            pass
        try:
            self._writer.close(block=False)
        except Exception:  # noqa: BLE001 - closing a writer whose server is gone must not mask the real error
            pass


def split_sample(spec: TransitionSpec, data: Mapping[str, Any]) -> TransitionBatch:
    """Sampled item data (numpy, leading batch axis) as a :class:`TransitionBatch`, unpacked by field name.

    Chunk items (``f32`` of rank 3, ``[B, H, ...]``) become chunk transitions: ``action [B, H, *A]``, ``reward
    [B, H]`` (0 past the episode's end), ``discount [B, H]`` = 1 for the chunk's steps inside the episode and 0
    past its end, ``terminated`` / ``truncated`` / ``is_intervention`` true if any step inside says so, the other
    scalars from the chunk's first step, ``next_obs`` the observation after the chunk (the final one if the episode
    ended inside it)."""
    a = _action_size(spec)
    f32, i64 = data["f32"], data["i64"]
    if f32.ndim == 3:
        return _split_chunk(spec, data)
    fields: dict[str, Any] = {k: f32[:, a + j] for j, k in enumerate(FLOAT_FIELDS)}
    fields.update({k: i64[:, j].astype(SCALAR_FIELDS[k]) for j, k in enumerate(INT_FIELDS)})
    return TransitionBatch(obs={k: v[:, 0] for k, v in data["obs"].items()},
                           next_obs={k: v[:, 1] for k, v in data["obs"].items()},
                           action=f32[:, :a].reshape(f32.shape[0], *spec.action.shape), **fields)


def _split_chunk(spec: TransitionSpec, data: Mapping[str, Any]) -> TransitionBatch:
    a = _action_size(spec)
    f32, i64 = data["f32"], data["i64"]
    b, h = f32.shape[:2]
    ints = {k: i64[:, :, j] for j, k in enumerate(INT_FIELDS)}
    ended = ints["terminated"].astype(bool) | ints["truncated"].astype(bool)
    valid = np.ones((b, h), bool)
    valid[:, 1:] = np.logical_not(np.cumsum(ended[:, :-1], axis=1) > 0)  # steps before the first end, and the end
    reward = f32[:, :, a + FLOAT_FIELDS.index("reward")] * valid
    terminated = (ints["terminated"].astype(bool) & valid).any(1)
    fields: dict[str, Any] = {
        "reward": reward.astype(np.float32), "discount": valid.astype(np.float32), "terminated": terminated,
        "truncated": (ints["truncated"].astype(bool) & valid).any(1) & ~terminated,
        "is_intervention": (ints["is_intervention"].astype(bool) & valid).any(1),
        "mc_return": f32[:, 0, a + FLOAT_FIELDS.index("mc_return")]}
    fields.update({k: ints[k][:, 0].astype(SCALAR_FIELDS[k]) for k in ("policy_version", "actor_id", "episode_id")})
    return TransitionBatch(obs={k: v[:, 0] for k, v in data["obs"].items()},
                           next_obs={k: v[:, h] for k, v in data["obs"].items()},
                           action=f32[:, :, :a].reshape(b, h, *spec.action.shape), **fields)


def make_dataset(address: str, batch_size: int, table: str = ONLINE_TABLE, in_flight: int | None = None,
                 rate_limiter_timeout_ms: int = -1) -> tf.data.Dataset:
    """Reverb's tf.data sampling path (the throughput path; ``Client.sample`` is not), batched.

    ``rate_limiter_timeout_ms`` -1 waits as long as the rate limiter blocks; otherwise the dataset ends then."""
    ds = reverb.TrajectoryDataset.from_table_signature(
        server_address=address, table=table,
        max_in_flight_samples_per_worker=in_flight or 2 * batch_size,
        rate_limiter_timeout_ms=rate_limiter_timeout_ms)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


class BatchSource:
    """Background thread that samples batches from Reverb into torch tensors on ``device``.

    One long-lived dataset iterator with no rate-limiter timeout: rebuilding the dataset after a timeout would
    drop the samples it had in flight, which Reverb has already counted against the update-to-data ratio. Stalls
    (the rate limiter holding the learner back) surface as a timed-out :meth:`next` returning None, so the learner
    loop still notices a stop request. A sampler thread left blocked by :meth:`close` ends with its server.
    """

    def __init__(self, address: str, spec: TransitionSpec, batch_size: int, device: torch.device | str = "cpu",
                 prefetch: int = 4, table: str = ONLINE_TABLE):
        self._address, self._spec, self._batch_size, self._table = address, spec, batch_size, table
        self._device = torch.device(device)
        self._queue: queue.Queue[TransitionBatch] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reverb-batch-source", daemon=True)
        self._thread.start()

    def _to_torch(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self._device.type == "cuda":
            return t.pin_memory().to(self._device, non_blocking=True)
        return t

    def _run(self) -> None:
        try:
            dataset = make_dataset(self._address, self._batch_size, self._table, rate_limiter_timeout_ms=-1)
            for sample in dataset.as_numpy_iterator():
                batch = split_sample(self._spec, sample.data).to(self._to_torch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._error = exc

    def next(self, timeout_s: float = 1.0) -> TransitionBatch | None:
        """The next batch, or None if none arrived within ``timeout_s``; re-raises a sampler failure."""
        if self._error is not None:
            raise RuntimeError(f"Reverb sampling from {self._address} failed") from self._error
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the sampler; waits at most ``timeout_s`` for it (it may be blocked in Reverb, see the class)."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)


class MixedBatchSource:
    """Batches made of a fixed number of rows from each of several tables, concatenated in the order given.

    Each part has its own :class:`BatchSource`; a batch is ready once every part is. Cal-QL / RLPD sample every
    batch half offline, half online (``offline.ratio``); HIL-SERL half from people's actions (``demos.ratio``)."""

    def __init__(self, *parts: BatchSource):
        self._parts = parts
        self._pending: list[TransitionBatch | None] = [None] * len(parts)

    def next(self, timeout_s: float = 1.0) -> TransitionBatch | None:
        deadline = time.monotonic() + timeout_s
        for i, source in enumerate(self._parts):
            while self._pending[i] is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None  # what arrived stays pending for the next call
                self._pending[i] = source.next(timeout_s=left)
        batches = self._pending
        self._pending = [None] * len(self._parts)
        out = batches[0]
        assert out is not None
        for other in batches[1:]:
            assert other is not None
            out = concat_batches(out, other)
        return out

    def close(self, timeout_s: float = 1.0) -> None:
        for source in self._parts:
            source.close(timeout_s)


def concat_batches(a: TransitionBatch, b: TransitionBatch) -> TransitionBatch:
    """Rows of ``a`` then rows of ``b`` (torch tensors)."""
    return TransitionBatch(**{
        f.name: ({k: torch.cat([x, getattr(b, f.name)[k]]) for k, x in getattr(a, f.name).items()}
                 if isinstance(getattr(a, f.name), dict) else torch.cat([getattr(a, f.name), getattr(b, f.name)]))
        for f in dataclasses.fields(a)})


def make_batch_source(address: str, spec: TransitionSpec, cfg: TrainConfig, device: torch.device | str,
                      offline_only: bool = False) -> BatchSource | MixedBatchSource:
    """The learner's batches: all ``online``; or, per :func:`fleetrl.config.batch_rows`, ``offline.ratio`` of each
    from ``offline`` (offline datasets) and ``demos.ratio`` from ``demos`` (people's actions), in that order, the
    rest ``online``; or all ``offline`` (``offline_only``, for pretraining)."""
    from fleetrl.distributed.offline import OFFLINE_TABLE

    size, prefetch = cfg.learner.batch_size, cfg.learner.prefetch_batches
    if offline_only:
        return BatchSource(address, spec, size, device, prefetch, table=OFFLINE_TABLE)
    rows = batch_rows(cfg)
    if len(rows) == 1:
        return BatchSource(address, spec, size, device, prefetch)
    return MixedBatchSource(*(BatchSource(address, spec, n, device, prefetch, table=table)
                              for table, n in rows.items()))


def limit_tf_threads(n: int) -> None:
    """Keep TensorFlow (used only for Reverb's dataset path) from spawning a thread pool per core."""
    try:
        tf.config.threading.set_inter_op_parallelism_threads(n)
        tf.config.threading.set_intra_op_parallelism_threads(n)
    except RuntimeError:  # already initialised in this process; the first setting stands
        pass
